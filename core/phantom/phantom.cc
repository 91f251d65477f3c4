// Synthetic short-axis cardiac cine-MR phantom. Each subject is drawn from a population: the
// heart (LV ellipse with a wobbly boundary, myocardial ring of varying thickness, RV crescent,
// papillary muscles, a partial basal slice) sits in a chest with fat, muscle, lungs, liver,
// stomach, spine and aorta, so that "the bright blob" is not the answer. Shapes are evaluated
// analytically in millimetres: labels come from the pixel centres (exact ground truth), the
// image from supersampled tissue intensities (partial volume, in-plane and through-plane),
// then blur, texture, slice intensity jumps, bias field and Rician noise are applied. All
// randomness comes from std::mt19937_64 (fully specified by the standard) through
// distributions written here, and sin/cos/log are computed here from +, -, *, / only, so the
// output is bit-identical across standard libraries.
#include "core/phantom/phantom.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/volume/volume.h"

namespace miseg {
namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr double kDegree = kPi / 180.0;

// ---------------------------------------------------------------------------------------
// Portable numerics. std::sin/std::log may differ in the last bit between C libraries, and
// std::normal_distribution between standard libraries; these only use IEEE-exact basic
// operations (and std::floor, std::frexp, std::sqrt, which are exact), so results repeat.

double SinPolynomial(double r) {  // |r| <= pi/4, Taylor series to r^17
  const double r2 = r * r;
  double sum = 1.0 / 355687428096000.0;  // 1/17!
  sum = sum * r2 - 1.0 / 1307674368000.0;
  sum = sum * r2 + 1.0 / 6227020800.0;
  sum = sum * r2 - 1.0 / 39916800.0;
  sum = sum * r2 + 1.0 / 362880.0;
  sum = sum * r2 - 1.0 / 5040.0;
  sum = sum * r2 + 1.0 / 120.0;
  sum = sum * r2 - 1.0 / 6.0;
  sum = sum * r2 + 1.0;
  return sum * r;
}

double CosPolynomial(double r) {  // |r| <= pi/4, Taylor series to r^18
  const double r2 = r * r;
  double sum = 1.0 / 6402373705728000.0;  // 1/18!
  sum = sum * r2 - 1.0 / 20922789888000.0;
  sum = sum * r2 + 1.0 / 87178291200.0;
  sum = sum * r2 - 1.0 / 479001600.0;
  sum = sum * r2 + 1.0 / 3628800.0;
  sum = sum * r2 - 1.0 / 40320.0;
  sum = sum * r2 + 1.0 / 720.0;
  sum = sum * r2 - 1.0 / 24.0;
  sum = sum * r2 + 0.5;
  return 1.0 - sum * r2;
}

void PortableSinCos(double angle, double* sine, double* cosine) {
  const double quarter_turns = std::floor(angle / (0.5 * kPi) + 0.5);
  const double reduced = angle - quarter_turns * (0.5 * kPi);
  const double s = SinPolynomial(reduced);
  const double c = CosPolynomial(reduced);
  const int64_t quadrant = ((static_cast<int64_t>(quarter_turns) % 4) + 4) % 4;
  switch (quadrant) {
    case 0: *sine = s;  *cosine = c;  break;
    case 1: *sine = c;  *cosine = -s; break;
    case 2: *sine = -s; *cosine = -c; break;
    default: *sine = -c; *cosine = s; break;
  }
}

double PortableCos(double angle) {
  double s = 0.0, c = 0.0;
  PortableSinCos(angle, &s, &c);
  return c;
}

double PortableLog(double x) {  // x > 0
  int exponent = 0;
  double mantissa = std::frexp(x, &exponent);  // [0.5, 1)
  if (mantissa < 0.70710678118654752) {
    mantissa *= 2.0;
    exponent -= 1;
  }
  // log(m) = 2 atanh(s), s = (m-1)/(m+1), |s| < 0.172: the odd series converges fast.
  const double s = (mantissa - 1.0) / (mantissa + 1.0);
  const double s2 = s * s;
  double sum = 1.0 / 23.0;
  for (int k = 21; k >= 1; k -= 2) sum = sum * s2 + 1.0 / k;
  return exponent * 0.69314718055994530942 + 2.0 * s * sum;
}

double PortableExp(double x) {
  if (x < -700.0) return 0.0;
  if (x > 700.0) x = 700.0;
  const double ln2 = 0.69314718055994530942;
  const double halvings = std::floor(x / ln2 + 0.5);
  const double r = x - halvings * ln2;  // |r| <= ln2/2: Taylor series to r^16
  double sum = 1.0;
  for (int k = 16; k >= 1; --k) sum = 1.0 + sum * r / k;
  return std::ldexp(sum, static_cast<int>(halvings));
}

double PortablePow(double base, double exponent) {  // exponent > 0
  if (base <= 0.0) return 0.0;
  return PortableExp(exponent * PortableLog(base));
}

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Distributions built from raw 64-bit draws, so they are the same on every platform.
class PortableRandom {
 public:
  explicit PortableRandom(uint64_t seed) : engine_(seed) {}

  double Uniform01() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  double Uniform(double low, double high) { return low + (high - low) * Uniform01(); }
  int UniformInt(int low, int high) {  // inclusive; modulo bias is negligible for our spans
    const uint64_t span = static_cast<uint64_t>(static_cast<int64_t>(high) - low) + 1;
    return low + static_cast<int>(engine_() % span);
  }
  bool Chance(double probability) { return Uniform01() < probability; }
  double Sign() { return Chance(0.5) ? 1.0 : -1.0; }
  // Marsaglia's polar method: needs only log and sqrt, no trigonometry.
  double Normal() {
    for (;;) {
      const double a = 2.0 * Uniform01() - 1.0;
      const double b = 2.0 * Uniform01() - 1.0;
      const double radius2 = a * a + b * b;
      if (radius2 > 0.0 && radius2 < 1.0) {
        return a * std::sqrt(-2.0 * PortableLog(radius2) / radius2);
      }
    }
  }

 private:
  std::mt19937_64 engine_;
};

// ---------------------------------------------------------------------------------------
// Shape primitives (millimetres, image plane: u grows with the column index, v with the row).

// Low-order Fourier perturbation of a radius: factor(phi) = 1 + sum a_k cos(k phi) +
// b_k sin(k phi), evaluated from (cos phi, sin phi) by recurrence, so no angle is needed.
struct RadialFourier {
  std::array<double, 5> cos_coef{};
  std::array<double, 5> sin_coef{};

  double Factor(double c, double s) const {
    double result = 1.0;
    double ck = c, sk = s;
    for (int k = 1; k <= 4; ++k) {
      result += cos_coef[k] * ck + sin_coef[k] * sk;
      const double next_c = ck * c - sk * s;
      const double next_s = sk * c + ck * s;
      ck = next_c;
      sk = next_s;
    }
    return result;
  }
  double MaxDeviation() const {
    double total = 0.0;
    for (int k = 1; k <= 4; ++k) total += std::fabs(cos_coef[k]) + std::fabs(sin_coef[k]);
    return total;
  }
  static RadialFourier Lerp(const RadialFourier& a, const RadialFourier& b, double w) {
    RadialFourier out;
    for (int k = 0; k <= 4; ++k) {
      out.cos_coef[k] = a.cos_coef[k] + (b.cos_coef[k] - a.cos_coef[k]) * w;
      out.sin_coef[k] = a.sin_coef[k] + (b.sin_coef[k] - a.sin_coef[k]) * w;
    }
    return out;
  }
};

RadialFourier RandomFourier(PortableRandom& rng, const std::array<double, 5>& amplitude) {
  RadialFourier f;
  for (int k = 1; k <= 4; ++k) {
    f.cos_coef[k] = rng.Uniform(-amplitude[k], amplitude[k]);
    f.sin_coef[k] = rng.Uniform(-amplitude[k], amplitude[k]);
  }
  return f;
}

struct RotatedEllipse {
  double cu = 0.0, cv = 0.0;  // centre
  double a = 1.0, b = 1.0;    // semi-axes along the rotated u and v axes
  double cos_angle = 1.0, sin_angle = 0.0;

  // < 1 inside, 1 on the boundary.
  double Level(double u, double v) const {
    const double du = u - cu, dv = v - cv;
    const double x = (du * cos_angle + dv * sin_angle) / a;
    const double y = (-du * sin_angle + dv * cos_angle) / b;
    return x * x + y * y;
  }
  bool Contains(double u, double v) const { return Level(u, v) < 1.0; }
  RotatedEllipse Shrunk(double by_a, double by_b) const {
    RotatedEllipse out = *this;
    out.a = std::max(1.0, a - by_a);
    out.b = std::max(1.0, b - by_b);
    return out;
  }
  RotatedEllipse Scaled(double factor) const {
    RotatedEllipse out = *this;
    out.a = a * factor;
    out.b = b * factor;
    return out;
  }
};

struct Disc {
  double cu = 0.0, cv = 0.0, radius = 0.0;
  bool Contains(double u, double v) const {
    const double du = u - cu, dv = v - cv;
    return du * du + dv * dv < radius * radius;
  }
};

// ---------------------------------------------------------------------------------------
// Tissues: what the renderer knows; labels and intensities are both functions of them.

enum Tissue : uint8_t {
  kAir,
  kBodyTissue,  // chest-wall and paraspinal muscle, mediastinal soft tissue
  kFat,
  kLung,
  kPulmonaryVessel,
  kLiver,
  kStomachFluid,
  kStomachGas,
  kVertebra,
  kSpinalCanal,
  kAorta,
  kLvBlood,
  kPapillaryMuscle,  // labeled as LV cavity, as in common cardiac datasets
  kMyocardium,
  kRvBlood,
  kRvWall,           // thin RV free wall: dark but background, a myocardium look-alike
  kAtrialBlood,      // basal slice cutting through the atrium/outflow: bright but background
  kEpicardialFat,
  kTissueCount,
};

uint8_t LabelOf(Tissue tissue) {
  switch (tissue) {
    case kLvBlood:
    case kPapillaryMuscle: return kPhantomLeftVentricle;
    case kMyocardium: return kPhantomMyocardium;
    case kRvBlood: return kPhantomRightVentricle;
    default: return kPhantomBackground;
  }
}

// ---------------------------------------------------------------------------------------
// Subject: every random choice, drawn once. Slice: the same evaluated at one position
// t along the long axis (0 = base, 1 = apex).

struct PlaneWave {
  double ku = 0.0, kv = 0.0, kslice = 0.0, phase = 0.0, amplitude = 0.0;
};

struct SubjectAnatomy {
  // Heart, in image millimetres; "local" axes: x from the LV towards the RV, y across.
  double lv_u = 0.0, lv_v = 0.0;
  double drift_u = 0.0, drift_v = 0.0;  // LV centre moves along the stack (oblique long axis)
  double axis_angle = 0.0, axis_twist = 0.0;
  double lv_radius_base = 25.0;         // mean cavity radius at the base
  double lv_apex_t = 1.15, lv_apex_power = 2.0;
  double ellipticity = 0.0, ellipse_angle = 0.0;
  RadialFourier cavity_base, cavity_apex;
  double thickness_mean = 8.0;
  RadialFourier thickness_shape;
  bool partial_base = false;
  double base_gap_angle = 0.0, base_gap_cos_half_span = 1.0, base_atrium_depth = 0.0;
  // RV: a crescent on the LV epicardium, deepest on the heart axis and tapering to the two
  // insertion points, which lie rv_half_angle away on either side.
  double rv_depth = 20.0, rv_shape_linearity = 0.3;
  std::array<double, 2> rv_half_angle{};  // towards negative / positive local y
  double rv_end_t = 0.85, rv_power = 1.5, rv_wall = 3.0;
  RadialFourier rv_wobble;
  double papillary_radius = 3.5, papillary_start_t = 0.2, papillary_end_t = 0.8;
  std::array<double, 2> papillary_angle{};
  // Trabeculae: dark specks in a thin band inside the endocardium (labeled LV, like the
  // papillary muscles), so the blood/myocardium edge is not the label edge everywhere.
  double trabecular_depth = 0.0, trabecular_threshold = 1.0;
  std::array<PlaneWave, 2> trabecular_pattern{};
  double epi_fat_angle = 0.0, epi_fat_thickness = 0.0;
  double pericardial_margin = 2.0;
  double t_first = 0.0, t_last = 1.0;
  double basal_gap_until_t = -1.0;  // the partial basal slice, with its through-plane samples

  // Chest.
  RotatedEllipse body, subcutaneous_inner, ribcage;
  double midline_u = 0.0, mediastinum_half_width = 15.0;
  RotatedEllipse posterior_mediastinum;  // around spine, aorta and oesophagus
  std::array<RotatedEllipse, 2> lungs;  // image left (patient right), image right
  std::array<double, 2> diaphragm_t{};  // lung starts shrinking beyond this t
  std::vector<Disc> pulmonary_vessels;
  std::vector<std::pair<double, double>> vessel_drift;
  Disc vertebra, spinal_canal;
  Disc aorta;
  double aorta_drift_u = 0.0, aorta_drift_v = 0.0;
  RotatedEllipse liver;
  double liver_start_t = 0.5;
  bool has_stomach = false;
  RotatedEllipse stomach;
  double stomach_start_t = 0.7, stomach_gas_fraction = 0.0;

  // Appearance.
  std::array<double, kTissueCount> intensity{};
  double blur_weight = 0.5;
  double noise_sigma = 0.0;
  std::array<double, 8> bias_coef{};
  double bias_amplitude = 0.0;
  std::array<PlaneWave, 3> texture{};
  std::vector<double> slice_factor;
};

struct SliceAnatomy {
  double lv_u = 0.0, lv_v = 0.0;
  double axis_cos = 1.0, axis_sin = 0.0;
  bool has_lv = false;
  double cavity_a = 1.0, cavity_b = 1.0, ellipse_cos = 1.0, ellipse_sin = 0.0;
  RadialFourier cavity_shape;
  double thickness = 8.0;
  const RadialFourier* thickness_shape = nullptr;
  int papillary_count = 0;
  double trabecular_depth = 0.0;
  std::array<Disc, 2> papillary{};
  bool has_gap = false;
  double gap_cos = 1.0, gap_sin = 0.0, gap_cos_half_span = 1.0, atrium_depth = 0.0;
  bool has_rv = false;
  double rv_depth = 0.0, rv_shape_linearity = 0.0, rv_wall = 0.0;
  std::array<double, 2> rv_cos_half{};       // cavity insertion points
  std::array<double, 2> rv_wall_cos_half{};  // free wall, a little wider
  std::array<double, 2> rv_margin_cos_half{};
  const RadialFourier* rv_wobble = nullptr;
  double epi_fat_cos = 1.0, epi_fat_sin = 0.0, epi_fat_thickness = 0.0;
  double margin = 2.0;
  double heart_reach = 0.0;  // no heart tissue farther than this from the LV centre

  const SubjectAnatomy* subject = nullptr;
  std::array<RotatedEllipse, 2> lungs;
  std::vector<Disc> vessels;
  Disc aorta;
  bool has_liver = false;
  RotatedEllipse liver;
  bool has_stomach = false;
  RotatedEllipse stomach;
  double stomach_gas_v = 0.0;  // gas floats anteriorly: above this v
};

double Clamp(double x, double low, double high) { return std::min(high, std::max(low, x)); }

// Two papillary muscles inside the LV cavity, against its wall.
void PlacePapillaryMuscles(const SubjectAnatomy& s, double lv_profile, SliceAnatomy& slice) {
  slice.papillary_count = 2;
  const double radius = s.papillary_radius * std::min(1.0, lv_profile * 1.1);
  for (int i = 0; i < 2; ++i) {
    double ps = 0.0, pc = 0.0;
    PortableSinCos(s.papillary_angle[i], &ps, &pc);
    const double ce = pc * slice.ellipse_cos + ps * slice.ellipse_sin;
    const double se = -pc * slice.ellipse_sin + ps * slice.ellipse_cos;
    const double wall = slice.cavity_shape.Factor(pc, ps) /
                        std::sqrt((ce / slice.cavity_a) * (ce / slice.cavity_a) +
                                  (se / slice.cavity_b) * (se / slice.cavity_b));
    const double distance = std::max(0.0, wall - 0.75 * radius);
    const double x = distance * pc, y = distance * ps;
    slice.papillary[i].cu = slice.lv_u + x * slice.axis_cos - y * slice.axis_sin;
    slice.papillary[i].cv = slice.lv_v + x * slice.axis_sin + y * slice.axis_cos;
    slice.papillary[i].radius = radius;
  }
}

void SliceRightVentricle(const SubjectAnatomy& s, double tc, double mean_outer,
                         SliceAnatomy& slice) {
  // RV: a crescent over the septal side of the LV epicardium; it shrinks faster than the
  // LV and is gone beyond rv_end_t (before the last slice).
  const double rv_profile_arg = 1.0 - PortablePow(std::max(tc, 0.0) / s.rv_end_t, s.rv_power);
  const double rv_profile = rv_profile_arg > 0.0 ? rv_profile_arg : 0.0;
  slice.has_rv = slice.has_lv && rv_profile > 0.03;
  if (slice.has_rv) {
    slice.rv_depth = s.rv_depth * rv_profile;
    slice.rv_shape_linearity = s.rv_shape_linearity;
    slice.rv_wall = s.rv_wall;
    slice.rv_wobble = &s.rv_wobble;
    for (int side = 0; side < 2; ++side) {
      // The crescent also narrows towards the apex.
      const double half = s.rv_half_angle[side] * (0.65 + 0.35 * std::sqrt(rv_profile));
      const double wall_extra = slice.rv_wall / std::max(mean_outer, 1.0);
      const double margin_extra = (slice.rv_wall + slice.margin) / std::max(mean_outer, 1.0);
      slice.rv_cos_half[side] = PortableCos(half);
      slice.rv_wall_cos_half[side] = PortableCos(std::min(half + wall_extra, kPi));
      slice.rv_margin_cos_half[side] = PortableCos(std::min(half + margin_extra, kPi));
    }
  }
}

// Chest organs that change along the stack.
void SliceChestOrgans(const SubjectAnatomy& s, double tc, double centred, SliceAnatomy& slice) {
  for (int side = 0; side < 2; ++side) {
    const double shrink = Clamp(1.0 - 1.6 * std::max(0.0, tc - s.diaphragm_t[side]), 0.25, 1.0);
    slice.lungs[side] = s.lungs[side].Scaled(shrink);
  }
  slice.vessels = s.pulmonary_vessels;
  for (size_t i = 0; i < slice.vessels.size(); ++i) {
    slice.vessels[i].cu += s.vessel_drift[i].first * centred;
    slice.vessels[i].cv += s.vessel_drift[i].second * centred;
  }
  slice.aorta = s.aorta;
  slice.aorta.cu += s.aorta_drift_u * centred;
  slice.aorta.cv += s.aorta_drift_v * centred;
  if (tc > s.liver_start_t) {
    slice.has_liver = true;
    slice.liver = s.liver.Scaled(std::sqrt(std::min(1.0, (tc - s.liver_start_t) / 0.35)));
  }
  if (s.has_stomach && tc > s.stomach_start_t) {
    slice.has_stomach = true;
    slice.stomach = s.stomach.Scaled(std::sqrt(std::min(1.0, (tc - s.stomach_start_t) / 0.3)));
    slice.stomach_gas_v = slice.stomach.cv - slice.stomach.b * (1.0 - 2.0 * s.stomach_gas_fraction);
  }
}

SliceAnatomy BuildSlice(const SubjectAnatomy& s, double t) {
  SliceAnatomy slice;
  slice.subject = &s;
  const double tc = Clamp(t, 0.0, 1.2);
  const double centred = tc - 0.5;
  slice.lv_u = s.lv_u + s.drift_u * centred;
  slice.lv_v = s.lv_v + s.drift_v * centred;
  PortableSinCos(s.axis_angle + s.axis_twist * centred, &slice.axis_sin, &slice.axis_cos);

  // LV: a half-ellipsoid-like taper, with a plateau at the base.
  const double lv_profile_arg = 1.0 - PortablePow(std::max(tc, 0.0) / s.lv_apex_t, s.lv_apex_power);
  const double lv_profile = lv_profile_arg > 0.0 ? std::sqrt(lv_profile_arg) : 0.0;
  const double cavity_radius = s.lv_radius_base * lv_profile;
  slice.has_lv = cavity_radius > 1.0;
  slice.cavity_a = cavity_radius * (1.0 + s.ellipticity);
  slice.cavity_b = cavity_radius * (1.0 - s.ellipticity);
  PortableSinCos(s.ellipse_angle, &slice.ellipse_sin, &slice.ellipse_cos);
  slice.cavity_shape = RadialFourier::Lerp(s.cavity_base, s.cavity_apex, Clamp(tc, 0.0, 1.0));
  slice.thickness = s.thickness_mean * (1.0 - 0.22 * Clamp(tc, 0.0, 1.0));
  slice.thickness_shape = &s.thickness_shape;
  slice.margin = s.pericardial_margin;
  const double outer_reach =
      slice.cavity_a * (1.0 + slice.cavity_shape.MaxDeviation()) +
      slice.thickness * (1.0 + s.thickness_shape.MaxDeviation());
  const double mean_outer = cavity_radius + slice.thickness;

  slice.trabecular_depth = s.trabecular_depth * (0.4 + 0.6 * Clamp(tc, 0.0, 1.0));
  if (slice.has_lv && tc > s.papillary_start_t && tc < s.papillary_end_t) {
    PlacePapillaryMuscles(s, lv_profile, slice);
  }

  if (s.partial_base && t <= s.basal_gap_until_t) {
    slice.has_gap = true;
    PortableSinCos(s.base_gap_angle, &slice.gap_sin, &slice.gap_cos);
    slice.gap_cos_half_span = s.base_gap_cos_half_span;
    slice.atrium_depth = s.base_atrium_depth;
  }

  SliceRightVentricle(s, tc, mean_outer, slice);
  PortableSinCos(s.epi_fat_angle, &slice.epi_fat_sin, &slice.epi_fat_cos);
  slice.epi_fat_thickness = s.epi_fat_thickness;

  double reach = outer_reach + std::max(s.epi_fat_thickness, slice.atrium_depth) + slice.margin;
  if (slice.has_rv) {
    const double rv_reach = outer_reach +
                            slice.rv_depth * (1.0 + s.rv_wobble.MaxDeviation()) +
                            slice.rv_wall + slice.margin;
    reach = std::max(reach, rv_reach);
  }
  slice.heart_reach = slice.has_lv ? reach + 1.0 : 0.0;

  SliceChestOrgans(s, tc, centred, slice);
  return slice;
}

// The heart tissue at (u, v), or kTissueCount when none. near_heart tells the lungs to keep
// a pericardial distance.
Tissue ClassifyHeart(const SliceAnatomy& slice, double u, double v, bool* near_heart) {
  *near_heart = false;
  if (!slice.has_lv) return kTissueCount;
  const double du = u - slice.lv_u, dv = v - slice.lv_v;
  const double distance2 = du * du + dv * dv;
  if (distance2 >= slice.heart_reach * slice.heart_reach) return kTissueCount;
  const double x = du * slice.axis_cos + dv * slice.axis_sin;
  const double y = -du * slice.axis_sin + dv * slice.axis_cos;
  const double rho = std::sqrt(distance2);
  const double c = rho > 1e-9 ? x / rho : 1.0;
  const double s = rho > 1e-9 ? y / rho : 0.0;

  const double ce = c * slice.ellipse_cos + s * slice.ellipse_sin;
  const double se = -c * slice.ellipse_sin + s * slice.ellipse_cos;
  const double ellipse_radius =
      1.0 / std::sqrt((ce / slice.cavity_a) * (ce / slice.cavity_a) +
                      (se / slice.cavity_b) * (se / slice.cavity_b));
  const double inner = ellipse_radius * slice.cavity_shape.Factor(c, s);
  const double outer = inner + slice.thickness * slice.thickness_shape->Factor(c, s);
  const bool in_gap = slice.has_gap &&
                      c * slice.gap_cos + s * slice.gap_sin > slice.gap_cos_half_span;

  if (rho < inner) {
    for (int i = 0; i < slice.papillary_count; ++i) {
      if (slice.papillary[i].Contains(u, v)) return kPapillaryMuscle;
    }
    if (rho > inner - slice.trabecular_depth) {
      const SubjectAnatomy& subject = *slice.subject;
      double pattern = 0.0;
      for (const PlaneWave& wave : subject.trabecular_pattern) {
        pattern += PortableCos(wave.ku * u + wave.kv * v + wave.phase);
      }
      if (pattern > subject.trabecular_threshold) return kPapillaryMuscle;
    }
    return kLvBlood;
  }
  if (rho < outer) return in_gap ? kAtrialBlood : kMyocardium;

  if (slice.has_rv) {
    // Angular profile from cos(phi) alone: 1 on the axis, 0 at the insertion point.
    const int side = s >= 0.0 ? 1 : 0;
    const double depth = slice.rv_depth * slice.rv_wobble->Factor(c, s);
    auto profile = [&](double cos_half) {
      const double g = (c - cos_half) / (1.0 - cos_half);
      if (g <= 0.0) return -1.0;
      return std::sqrt(g) + slice.rv_shape_linearity * (g - std::sqrt(g));
    };
    const double cavity = profile(slice.rv_cos_half[side]);
    if (cavity > 0.0 && rho < outer + depth * cavity) return kRvBlood;
    const double wall = profile(slice.rv_wall_cos_half[side]);
    if (wall > 0.0 && rho < outer + (depth + slice.rv_wall) * wall) return kRvWall;
    const double margin = profile(slice.rv_margin_cos_half[side]);
    if (margin > 0.0 && rho < outer + (depth + slice.rv_wall + slice.margin) * margin) {
      *near_heart = true;
    }
  }
  if (in_gap && rho < outer + slice.atrium_depth) return kAtrialBlood;
  if (slice.epi_fat_thickness > 0.0) {
    const double alignment = c * slice.epi_fat_cos + s * slice.epi_fat_sin;
    const double fat = slice.epi_fat_thickness * std::max(0.0, alignment - 0.4) / 0.6;
    if (rho < outer + fat) return kEpicardialFat;
  }
  if (rho < outer + slice.margin + (slice.has_gap ? slice.atrium_depth : 0.0)) *near_heart = true;
  return kTissueCount;
}

Tissue Classify(const SliceAnatomy& slice, double u, double v) {
  const SubjectAnatomy& s = *slice.subject;
  if (!s.body.Contains(u, v)) return kAir;
  bool near_heart = false;
  const Tissue heart = ClassifyHeart(slice, u, v, &near_heart);
  if (heart != kTissueCount) return heart;
  if (slice.aorta.Contains(u, v)) return kAorta;
  if (s.vertebra.Contains(u, v)) return kVertebra;
  if (s.spinal_canal.Contains(u, v)) return kSpinalCanal;
  if (!s.subcutaneous_inner.Contains(u, v)) return kFat;
  const bool in_ribcage = s.ribcage.Contains(u, v);
  if (in_ribcage && slice.has_liver && slice.liver.Contains(u, v)) return kLiver;
  if (in_ribcage && slice.has_stomach && slice.stomach.Contains(u, v)) {
    return v < slice.stomach_gas_v ? kStomachGas : kStomachFluid;
  }
  if (in_ribcage && !near_heart) {
    const bool side_ok[2] = {u < s.midline_u - s.mediastinum_half_width,
                             u > s.midline_u + s.mediastinum_half_width};
    if (s.posterior_mediastinum.Contains(u, v)) return kBodyTissue;
    for (int side = 0; side < 2; ++side) {
      if (!side_ok[side] || !slice.lungs[side].Contains(u, v)) continue;
      Disc aorta_margin = slice.aorta;
      aorta_margin.radius += 3.0;
      Disc spine_margin = s.vertebra;
      spine_margin.radius += 6.0;
      if (aorta_margin.Contains(u, v) || spine_margin.Contains(u, v)) break;
      for (const Disc& vessel : slice.vessels) {
        if (vessel.Contains(u, v)) return kPulmonaryVessel;
      }
      return kLung;
    }
  }
  return kBodyTissue;
}

// ---------------------------------------------------------------------------------------
// Drawing a subject.

struct Grid {
  int slices = 0, rows = 0, cols = 0;
  double pixel_mm = 1.5, slice_mm = 8.0;
};

Grid DrawGrid(PortableRandom& rng, const PhantomOptions& options) {
  Grid grid;
  const int min_slices = std::max(2, std::min(options.min_slices, options.max_slices));
  const int max_slices = std::max(min_slices, std::max(options.min_slices, options.max_slices));
  const int min_matrix = std::max(32, std::min(options.min_matrix, options.max_matrix));
  const int max_matrix = std::max(min_matrix, std::max(options.min_matrix, options.max_matrix));
  const double min_pixel = std::max(0.1, std::min(options.min_pixel_mm, options.max_pixel_mm));
  const double max_pixel =
      std::max(min_pixel, std::max(options.min_pixel_mm, options.max_pixel_mm));
  const double min_slice = std::max(0.5, std::min(options.min_slice_mm, options.max_slice_mm));
  const double max_slice =
      std::max(min_slice, std::max(options.min_slice_mm, options.max_slice_mm));
  grid.slices = rng.UniformInt(min_slices, max_slices);
  grid.rows = rng.UniformInt(min_matrix, max_matrix);
  grid.cols = rng.UniformInt(min_matrix, max_matrix);
  grid.pixel_mm = rng.Uniform(min_pixel, max_pixel);
  grid.slice_mm = rng.Uniform(min_slice, max_slice);
  return grid;
}

// The subject's heart: size, contraction, wall, RV, papillary muscles, trabeculae, extent.
void DrawHeartShape(PortableRandom& rng, const Grid& grid, SubjectAnatomy& s) {
  // --- Heart shape. Size and contraction state (end-diastole .. end-systole) are separate
  // draws so that cavity and wall thickness are only loosely coupled.
  const double contraction = rng.Chance(0.5) ? rng.Uniform(0.0, 0.25) : rng.Uniform(0.4, 1.0);
  const double size = rng.Uniform(0.8, 1.2);
  s.lv_radius_base = Clamp(25.5 * size * (1.0 - 0.28 * contraction), 17.5, 30.0);
  s.thickness_mean = Clamp(rng.Uniform(6.5, 9.0) * (1.0 + 0.35 * contraction), 6.0, 12.0);
  s.lv_apex_t = rng.Uniform(1.08, 1.28);
  s.lv_apex_power = rng.Uniform(1.7, 2.6);
  s.ellipticity = rng.Uniform(0.0, 0.16);
  s.ellipse_angle = rng.Uniform(0.0, kPi);
  s.cavity_base = RandomFourier(rng, {0.0, 0.0, 0.06, 0.035, 0.02});
  s.cavity_apex = RandomFourier(rng, {0.0, 0.0, 0.07, 0.045, 0.025});
  s.thickness_shape = RandomFourier(rng, {0.0, 0.16, 0.08, 0.04, 0.0});
  // The typical axis points from the LV to image left and a little up (anterior); the
  // subject's heart turns within +-40 degrees of it.
  s.axis_angle = 200.0 * kDegree + rng.Uniform(-40.0, 40.0) * kDegree;
  s.axis_twist = rng.Uniform(-12.0, 12.0) * kDegree;
  s.partial_base = rng.Chance(0.55);
  s.base_gap_angle = rng.Uniform(-90.0, -20.0) * kDegree * (rng.Chance(0.5) ? 1.0 : -1.0);
  s.base_gap_cos_half_span = PortableCos(rng.Uniform(25.0, 55.0) * kDegree);
  s.base_atrium_depth = rng.Uniform(8.0, 22.0);
  const double rv_scale = rng.Uniform(0.7, 1.35);
  s.rv_depth = rng.Uniform(14.0, 26.0) * rv_scale;
  s.rv_shape_linearity = rng.Uniform(0.0, 0.6);
  s.rv_half_angle[0] = rng.Uniform(50.0, 80.0) * kDegree * (0.85 + 0.15 * rv_scale);
  s.rv_half_angle[1] = rng.Uniform(50.0, 80.0) * kDegree * (0.85 + 0.15 * rv_scale);
  s.rv_end_t = rng.Uniform(0.72, 0.9);
  s.rv_power = rng.Uniform(1.3, 2.5);
  s.rv_wall = rng.Uniform(2.0, 3.8);
  s.rv_wobble = RandomFourier(rng, {0.0, 0.12, 0.08, 0.04, 0.0});
  s.papillary_radius = rng.Uniform(2.5, 4.5);
  s.papillary_start_t = rng.Uniform(0.1, 0.35);
  s.papillary_end_t = rng.Uniform(0.7, 0.95);
  s.papillary_angle[0] = (180.0 + rng.Uniform(30.0, 60.0)) * kDegree;
  s.papillary_angle[1] = (180.0 - rng.Uniform(30.0, 60.0)) * kDegree;
  s.trabecular_depth = rng.Chance(0.75) ? rng.Uniform(0.8, 3.0) : 0.0;
  s.trabecular_threshold = rng.Uniform(0.6, 1.2);
  for (PlaneWave& wave : s.trabecular_pattern) {
    const double wavelength = rng.Uniform(3.5, 7.0);
    double ws = 0.0, wc = 0.0;
    PortableSinCos(rng.Uniform(0.0, 2.0 * kPi), &ws, &wc);
    wave.ku = 2.0 * kPi / wavelength * wc;
    wave.kv = 2.0 * kPi / wavelength * ws;
    wave.phase = rng.Uniform(0.0, 2.0 * kPi);
  }
  s.epi_fat_angle = rng.Uniform(120.0, 240.0) * kDegree;
  s.epi_fat_thickness = rng.Chance(0.6) ? rng.Uniform(2.0, 7.0) : 0.0;
  s.pericardial_margin = rng.Uniform(0.0, 3.5);
  s.t_first = rng.Uniform(-0.02, 0.06);
  s.t_last = rng.Uniform(0.95, 1.02);
  const double t_step = grid.slices > 1 ? (s.t_last - s.t_first) / (grid.slices - 1) : 1.0;
  s.basal_gap_until_t = s.t_first + 0.5 * t_step;
}

// The heart's place in the field of view: off-centre but entirely inside. Returns the LV's
// outer radius, which the aorta keeps clear of.
double PlaceHeart(PortableRandom& rng, const Grid& grid, SubjectAnatomy& s) {
  // --- Place the heart in the field of view: off-centre but entirely inside.
  const double fov_u = grid.cols * grid.pixel_mm, fov_v = grid.rows * grid.pixel_mm;
  s.drift_u = rng.Uniform(-8.0, 8.0);
  s.drift_v = rng.Uniform(-8.0, 8.0);
  const double lv_outer = s.lv_radius_base * (1.0 + s.ellipticity) * 1.15 + s.thickness_mean * 1.3;
  const double heart_radius = lv_outer + s.rv_depth + s.rv_wall + 6.0 + 4.0;  // + drift
  const double room_u = Clamp(0.5 * fov_u - heart_radius - 4.0, 0.0, 40.0);
  const double room_v = Clamp(0.5 * fov_v - heart_radius - 4.0, 0.0, 40.0);
  s.lv_u = rng.Uniform(-room_u, room_u) + 12.0 * std::min(1.0, room_u / 20.0);
  s.lv_v = rng.Uniform(-room_v, room_v);
  s.lv_u = Clamp(s.lv_u, -room_u, room_u);
  return lv_outer;
}

// Where the chest lies relative to the heart; what the later drawings need of it.
struct ChestFrame {
  double body_cu = 0, body_cv = 0, fat_ap = 0;
};

// Body outline, subcutaneous fat, ribcage, mediastinum, lungs and the diaphragm.
ChestFrame DrawChest(PortableRandom& rng, SubjectAnatomy& s) {
  // --- Chest. The heart sits anterior and to the patient's left (image right) of the
  // body centre.
  const double body_cu = s.lv_u - rng.Uniform(10.0, 40.0);
  const double body_cv = s.lv_v + rng.Uniform(22.0, 45.0);
  double tilt_s = 0.0, tilt_c = 1.0;
  PortableSinCos(rng.Uniform(-8.0, 8.0) * kDegree, &tilt_s, &tilt_c);
  s.body = {body_cu, body_cv, rng.Uniform(150.0, 215.0), rng.Uniform(108.0, 150.0), tilt_c, tilt_s};
  const double fat_lateral = rng.Uniform(5.0, 25.0);
  const double fat_ap = rng.Uniform(4.0, 18.0);
  s.subcutaneous_inner = s.body.Shrunk(fat_lateral, fat_ap);
  s.ribcage = s.subcutaneous_inner.Shrunk(rng.Uniform(10.0, 22.0), rng.Uniform(8.0, 18.0));
  s.midline_u = body_cu + rng.Uniform(-5.0, 5.0);
  s.mediastinum_half_width = rng.Uniform(2.0, 12.0);
  for (int side = 0; side < 2; ++side) {
    const double sign = side == 0 ? -1.0 : 1.0;
    RotatedEllipse lung;
    lung.cu = body_cu + sign * s.ribcage.a * rng.Uniform(0.42, 0.55);
    lung.cv = body_cv - s.ribcage.b * rng.Uniform(0.0, 0.15);
    lung.a = s.ribcage.a * rng.Uniform(0.45, 0.58);
    lung.b = s.ribcage.b * rng.Uniform(0.75, 0.95);
    PortableSinCos(sign * rng.Uniform(-15.0, 5.0) * kDegree, &lung.sin_angle, &lung.cos_angle);
    s.lungs[side] = lung;
  }
  s.diaphragm_t[0] = rng.Uniform(0.3, 0.7);  // patient right: the liver dome rises higher
  s.diaphragm_t[1] = rng.Uniform(0.6, 1.0);
  return {body_cu, body_cv, fat_ap};
}

void DrawPulmonaryVessels(PortableRandom& rng, SubjectAnatomy& s) {
  const int vessel_count = rng.UniformInt(8, 20);
  for (int i = 0; i < vessel_count; ++i) {
    const RotatedEllipse& lung = s.lungs[i % 2];
    double x = 0.0, y = 0.0;
    do {
      x = rng.Uniform(-1.0, 1.0);
      y = rng.Uniform(-1.0, 1.0);
    } while (x * x + y * y > 0.8);
    const double du = x * lung.a, dv = y * lung.b;
    s.pulmonary_vessels.push_back({lung.cu + du * lung.cos_angle - dv * lung.sin_angle,
                                   lung.cv + du * lung.sin_angle + dv * lung.cos_angle,
                                   rng.Uniform(1.3, 3.5)});
    s.vessel_drift.emplace_back(rng.Uniform(-15.0, 15.0), rng.Uniform(-15.0, 15.0));
  }
}

// Vertebra, spinal canal, descending aorta (clear of the heart) and posterior mediastinum.
void DrawSpineAndAorta(PortableRandom& rng, const ChestFrame& chest, double lv_outer,
                       SubjectAnatomy& s) {
  const double body_cu = chest.body_cu, body_cv = chest.body_cv, fat_ap = chest.fat_ap;
  const double vertebra_radius = rng.Uniform(13.0, 19.0);
  s.vertebra = {body_cu + rng.Uniform(-6.0, 6.0),
                body_cv + s.body.b - fat_ap - rng.Uniform(48.0, 65.0) - vertebra_radius,
                vertebra_radius};
  const double canal_radius = rng.Uniform(5.5, 8.5);
  s.spinal_canal = {s.vertebra.cu, s.vertebra.cv + vertebra_radius + canal_radius +
                                       rng.Uniform(1.0, 4.0), canal_radius};
  s.aorta = {s.vertebra.cu + rng.Uniform(14.0, 30.0),
             s.vertebra.cv - vertebra_radius * rng.Uniform(0.5, 1.2),
             rng.Uniform(9.0, 14.0)};
  // Keep the descending aorta close to but clear of the heart: push it away along the
  // line from the LV if they would overlap.
  {
    const double du = s.aorta.cu - s.lv_u, dv = s.aorta.cv - s.lv_v;
    const double distance = std::sqrt(du * du + dv * dv);
    const double wanted = lv_outer + s.aorta.radius + rng.Uniform(3.0, 15.0);
    if (distance < wanted && distance > 1e-6) {
      s.aorta.cu = s.lv_u + du * wanted / distance;
      s.aorta.cv = s.lv_v + dv * wanted / distance;
    }
  }
  s.posterior_mediastinum = {0.5 * (s.vertebra.cu + s.aorta.cu),
                             s.vertebra.cv - rng.Uniform(0.0, 15.0),
                             s.aorta.radius + rng.Uniform(8.0, 20.0), rng.Uniform(25.0, 45.0),
                             1.0, 0.0};
  s.aorta_drift_u = rng.Uniform(-6.0, 6.0);
  s.aorta_drift_v = rng.Uniform(-6.0, 6.0);
}

void DrawLiverAndStomach(PortableRandom& rng, const ChestFrame& chest, SubjectAnatomy& s) {
  const double body_cu = chest.body_cu, body_cv = chest.body_cv;
  s.liver.cu = body_cu - s.ribcage.a * rng.Uniform(0.25, 0.45);
  s.liver.cv = body_cv + s.ribcage.b * rng.Uniform(0.0, 0.25);
  s.liver.a = s.ribcage.a * rng.Uniform(0.5, 0.7);
  s.liver.b = s.ribcage.b * rng.Uniform(0.55, 0.8);
  PortableSinCos(rng.Uniform(-25.0, 10.0) * kDegree, &s.liver.sin_angle, &s.liver.cos_angle);
  s.liver_start_t = rng.Uniform(0.25, 0.75);
  s.has_stomach = rng.Chance(0.65);
  s.stomach.cu = body_cu + s.ribcage.a * rng.Uniform(0.3, 0.55);
  s.stomach.cv = body_cv + s.ribcage.b * rng.Uniform(0.05, 0.35);
  s.stomach.a = rng.Uniform(22.0, 45.0);
  s.stomach.b = rng.Uniform(18.0, 35.0);
  s.stomach_start_t = rng.Uniform(0.5, 0.85);
  s.stomach_gas_fraction = rng.Chance(0.5) ? rng.Uniform(0.0, 0.5) : 0.0;
}

void DrawAppearance(PortableRandom& rng, const Grid& grid, double noise_level, SubjectAnatomy& s) {
  // --- Appearance: SSFP contrast (blood and fat bright, muscle dark, lung and air black),
  // with the blood/myocardium ratio and everything else varying per subject.
  const double blood = rng.Uniform(350.0, 1300.0);
  const double myocardium = blood / rng.Uniform(2.0, 5.0);
  auto& level = s.intensity;
  level[kAir] = 0.0;
  level[kBodyTissue] = myocardium * rng.Uniform(0.9, 1.45);
  level[kFat] = blood * rng.Uniform(0.7, 1.1);
  level[kLung] = blood * rng.Uniform(0.02, 0.07);
  level[kPulmonaryVessel] = blood * rng.Uniform(0.35, 0.8);
  level[kLiver] = myocardium * rng.Uniform(1.0, 1.7);
  level[kStomachFluid] = blood * rng.Uniform(0.5, 1.0);
  level[kStomachGas] = blood * rng.Uniform(0.0, 0.04);
  level[kVertebra] = blood * rng.Uniform(0.3, 0.6);
  level[kSpinalCanal] = blood * rng.Uniform(0.6, 1.0);
  level[kAorta] = blood * rng.Uniform(0.7, 1.05);
  level[kLvBlood] = blood;
  level[kPapillaryMuscle] = myocardium * rng.Uniform(1.0, 1.4);
  level[kMyocardium] = myocardium;
  level[kRvBlood] = blood * rng.Uniform(0.82, 1.0);
  level[kRvWall] = myocardium * rng.Uniform(0.9, 1.3);
  level[kAtrialBlood] = blood * rng.Uniform(0.8, 1.0);
  level[kEpicardialFat] = level[kFat] * rng.Uniform(0.85, 1.0);

  s.blur_weight = rng.Uniform(0.15, 1.0);
  s.noise_sigma = noise_level * blood * rng.Uniform(0.015, 0.05);
  for (double& coefficient : s.bias_coef) coefficient = rng.Uniform(-1.0, 1.0);
  s.bias_amplitude = rng.Uniform(0.08, 0.3);
  for (PlaneWave& wave : s.texture) {
    const double wavelength = rng.Uniform(25.0, 70.0);
    double ws = 0.0, wc = 0.0;
    PortableSinCos(rng.Uniform(0.0, 2.0 * kPi), &ws, &wc);
    wave.ku = 2.0 * kPi / wavelength * wc;
    wave.kv = 2.0 * kPi / wavelength * ws;
    wave.kslice = rng.Uniform(0.0, 2.0 * kPi);
    wave.phase = rng.Uniform(0.0, 2.0 * kPi);
    wave.amplitude = rng.Uniform(0.0, 0.012);
  }
  // A couple of slices off in intensity (breath-hold-to-breath-hold scaling differences).
  s.slice_factor.assign(static_cast<size_t>(grid.slices), 1.0);
  const int odd_slices = rng.UniformInt(0, 2);
  for (int i = 0; i < odd_slices; ++i) {
    const int k = rng.UniformInt(0, grid.slices - 1);
    s.slice_factor[static_cast<size_t>(k)] =
        rng.Chance(0.5) ? rng.Uniform(0.8, 0.92) : rng.Uniform(1.08, 1.2);
  }
}

// The draws happen in a fixed order: every subject of a population is reproducible.
SubjectAnatomy DrawAnatomy(PortableRandom& rng, const Grid& grid, double noise_level) {
  SubjectAnatomy s;
  DrawHeartShape(rng, grid, s);
  const double lv_outer = PlaceHeart(rng, grid, s);
  const ChestFrame chest = DrawChest(rng, s);
  DrawPulmonaryVessels(rng, s);
  DrawSpineAndAorta(rng, chest, lv_outer, s);
  DrawLiverAndStomach(rng, chest, s);
  DrawAppearance(rng, grid, noise_level, s);
  return s;
}

std::array<double, 3> Normalized(std::array<double, 3> v) {
  const double norm = std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
  for (double& x : v) x /= norm;
  return v;
}

std::array<double, 3> Cross(const std::array<double, 3>& a, const std::array<double, 3>& b) {
  return {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
}

// Oblique short-axis orientation in patient LPS coordinates: the stack runs from base to
// apex (towards patient left, anterior, inferior); image down is roughly posterior, image
// right roughly the patient's left.
VolumeGeometry DrawGeometry(PortableRandom& rng, const Grid& grid) {
  VolumeGeometry g;
  g.slices = grid.slices;
  g.rows = grid.rows;
  g.cols = grid.cols;
  g.row_spacing_mm = grid.pixel_mm;
  g.col_spacing_mm = grid.pixel_mm;
  g.slice_spacing_mm = grid.slice_mm;
  const std::array<double, 3> apex = Normalized({0.55 + rng.Uniform(-0.15, 0.15),
                                                 -0.45 + rng.Uniform(-0.15, 0.15),
                                                 -0.7 + rng.Uniform(-0.15, 0.15)});
  const double posterior_along_apex = apex[1];
  std::array<double, 3> down = Normalized({-posterior_along_apex * apex[0],
                                           1.0 - posterior_along_apex * apex[1],
                                           -posterior_along_apex * apex[2]});
  std::array<double, 3> right = Cross(down, apex);
  if (right[0] < 0.0) right = {-right[0], -right[1], -right[2]};
  // A small in-plane turn of the whole image.
  double turn_s = 0.0, turn_c = 1.0;
  PortableSinCos(rng.Uniform(-10.0, 10.0) * kDegree, &turn_s, &turn_c);
  std::array<double, 3> row_direction{}, col_direction{};
  for (int i = 0; i < 3; ++i) {
    row_direction[i] = turn_c * right[i] + turn_s * down[i];
    col_direction[i] = -turn_s * right[i] + turn_c * down[i];
  }
  g.row_direction = Normalized(row_direction);
  g.col_direction = Normalized(col_direction);
  g.slice_direction = apex;
  const std::array<double, 3> heart_centre = {rng.Uniform(-10.0, 40.0), rng.Uniform(-40.0, 10.0),
                                              rng.Uniform(-80.0, -20.0)};
  for (int i = 0; i < 3; ++i) {
    g.origin_mm[i] = heart_centre[i] - 0.5 * (grid.cols - 1) * grid.pixel_mm * g.row_direction[i] -
                     0.5 * (grid.rows - 1) * grid.pixel_mm * g.col_direction[i] -
                     0.5 * (grid.slices - 1) * grid.slice_mm * g.slice_direction[i];
  }
  return g;
}

// Smooth multiplicative field: a low-order polynomial in normalized coordinates, scaled so
// that its largest deviation from 1 over the volume is the subject's amplitude.
std::vector<double> BiasField(const SubjectAnatomy& s, const Grid& grid) {
  const size_t count = static_cast<size_t>(grid.slices) * grid.rows * grid.cols;
  std::vector<double> field(count, 0.0);
  double largest = 0.0;
  const auto& a = s.bias_coef;
  size_t index = 0;
  for (int k = 0; k < grid.slices; ++k) {
    const double z = grid.slices > 1 ? 2.0 * k / (grid.slices - 1) - 1.0 : 0.0;
    for (int r = 0; r < grid.rows; ++r) {
      const double y = 2.0 * r / (grid.rows - 1) - 1.0;
      for (int c = 0; c < grid.cols; ++c, ++index) {
        const double x = 2.0 * c / (grid.cols - 1) - 1.0;
        const double value = a[0] * x + a[1] * y + 0.6 * a[2] * x * x + 0.6 * a[3] * y * y +
                             0.6 * a[4] * x * y + 0.3 * a[5] * z + 0.3 * a[6] * x * z +
                             0.3 * a[7] * y * z;
        field[index] = value;
        largest = std::max(largest, std::fabs(value));
      }
    }
  }
  const double scale = largest > 0.0 ? s.bias_amplitude / largest : 0.0;
  for (double& value : field) value = 1.0 + value * scale;
  return field;
}

// Slice k without blur or noise: labels from the slice's centre, intensities averaged over
// 3x3 sub-pixel samples at three positions through the slice thickness, interleaved, which
// gives partial-volume edges in-plane and between slices.
void RenderIdealSlice(const SubjectAnatomy& anatomy, const Grid& grid, int k, double t_step,
                      LabelVolume& labels, std::vector<double>& ideal) {
  const int rows = grid.rows, cols = grid.cols;
  const double pixel = grid.pixel_mm;
  const double sub_offsets[3] = {-pixel / 3.0, 0.0, pixel / 3.0};
  const double t = anatomy.t_first + t_step * k;
  const SliceAnatomy through_plane[3] = {BuildSlice(anatomy, t - 0.3 * t_step),
                                         BuildSlice(anatomy, t),
                                         BuildSlice(anatomy, t + 0.3 * t_step)};
  const SliceAnatomy& centre = through_plane[1];
  for (int r = 0; r < rows; ++r) {
    const double v = (r - 0.5 * (rows - 1)) * pixel;
    for (int c = 0; c < cols; ++c) {
      const double u = (c - 0.5 * (cols - 1)) * pixel;
      labels.at(k, r, c) = LabelOf(Classify(centre, u, v));
      double sum = 0.0;
      for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) {
          const SliceAnatomy& sample_slice = through_plane[(i * 3 + j + k) % 3];
          sum += anatomy.intensity[Classify(sample_slice, u + sub_offsets[j],
                                            v + sub_offsets[i])];
        }
      }
      ideal[static_cast<size_t>(r) * cols + c] = sum / 9.0;
    }
  }
}

// Separable [1 2 1]/4 blur, blended per subject (scanners differ in sharpness), then the
// low-frequency texture and the slice's intensity factor; written into slice k of image.
void BlurAndShadeSlice(const SubjectAnatomy& anatomy, const Grid& grid, int k,
                       const std::vector<double>& ideal, std::vector<double>& blurred,
                       std::vector<double>& image) {
  const int rows = grid.rows, cols = grid.cols;
  const double pixel = grid.pixel_mm;
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      const double left = ideal[static_cast<size_t>(r) * cols + std::max(c - 1, 0)];
      const double mid = ideal[static_cast<size_t>(r) * cols + c];
      const double right = ideal[static_cast<size_t>(r) * cols + std::min(c + 1, cols - 1)];
      blurred[static_cast<size_t>(r) * cols + c] = 0.25 * left + 0.5 * mid + 0.25 * right;
    }
  }
  for (int r = 0; r < rows; ++r) {
    const double v = (r - 0.5 * (rows - 1)) * pixel;
    for (int c = 0; c < cols; ++c) {
      const double u = (c - 0.5 * (cols - 1)) * pixel;
      const double up = blurred[static_cast<size_t>(std::max(r - 1, 0)) * cols + c];
      const double mid = blurred[static_cast<size_t>(r) * cols + c];
      const double down = blurred[static_cast<size_t>(std::min(r + 1, rows - 1)) * cols + c];
      const double smooth = 0.25 * up + 0.5 * mid + 0.25 * down;
      const double sharp = ideal[static_cast<size_t>(r) * cols + c];
      double value = sharp + anatomy.blur_weight * (smooth - sharp);
      double texture = 1.0;
      for (const PlaneWave& wave : anatomy.texture) {
        texture += wave.amplitude *
                   PortableCos(wave.ku * u + wave.kv * v + wave.kslice * k + wave.phase);
      }
      value *= texture * anatomy.slice_factor[static_cast<size_t>(k)];
      image[(static_cast<size_t>(k) * rows + r) * cols + c] = value;
    }
  }
}

// Rician noise: the magnitude of the signal plus complex Gaussian noise.
void AddRicianNoise(const std::vector<double>& image, double sigma, PortableRandom& noise_rng,
                    ImageVolume& out) {
  for (size_t i = 0; i < image.size(); ++i) {
    double value = image[i];
    if (sigma > 0.0) {
      const double real = value + sigma * noise_rng.Normal();
      const double imaginary = sigma * noise_rng.Normal();
      value = std::sqrt(real * real + imaginary * imaginary);
    }
    out.voxels[i] = static_cast<float>(value);
  }
}

}  // namespace

PhantomSubject GeneratePhantomSubject(uint64_t population_seed, int subject_index,
                                      const PhantomOptions& options) {
  PhantomSubject subject;
  subject.seed = SplitMix64(population_seed ^
                            SplitMix64(0xC0FFEEULL + static_cast<uint64_t>(
                                                         static_cast<int64_t>(subject_index))));
  // Separate streams so that noise settings never change the anatomy.
  PortableRandom anatomy_rng(subject.seed);
  PortableRandom noise_rng(SplitMix64(subject.seed ^ 0x5EED0F0015EULL));

  const Grid grid = DrawGrid(anatomy_rng, options);
  const SubjectAnatomy anatomy = DrawAnatomy(anatomy_rng, grid, std::max(0.0, options.noise_level));
  const VolumeGeometry geometry = DrawGeometry(anatomy_rng, grid);
  subject.image = ImageVolume(geometry);
  subject.labels = LabelVolume(geometry);

  const double t_step =
      grid.slices > 1 ? (anatomy.t_last - anatomy.t_first) / (grid.slices - 1) : 0.0;
  std::vector<double> ideal(static_cast<size_t>(grid.rows) * grid.cols);
  std::vector<double> blurred(ideal.size());
  std::vector<double> image(static_cast<size_t>(geometry.voxel_count()));
  for (int k = 0; k < grid.slices; ++k) {
    RenderIdealSlice(anatomy, grid, k, t_step, subject.labels, ideal);
    BlurAndShadeSlice(anatomy, grid, k, ideal, blurred, image);
  }
  if (options.bias_field) {
    const std::vector<double> bias = BiasField(anatomy, grid);
    for (size_t i = 0; i < image.size(); ++i) image[i] *= bias[i];
  }
  AddRicianNoise(image, anatomy.noise_sigma, noise_rng, subject.image);
  return subject;
}

const std::vector<std::string>& PhantomClassNames() {
  static const std::vector<std::string> names = {"background", "right_ventricle", "myocardium",
                                                 "left_ventricle"};
  return names;
}

}  // namespace miseg
