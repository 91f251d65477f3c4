#include "client/cli/terminal.h"

#include <signal.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>

#include "absl/strings/str_cat.h"

namespace miseg::cli {
namespace {

volatile sig_atomic_t terminal_resized = 0;

void OnResize(int) { terminal_resized = 1; }

// One UTF-8 code point from text at *pos (advanced past it); an invalid byte is returned
// as itself with *valid false.
char32_t NextCodePoint(absl::string_view text, size_t* pos, bool* valid) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char first = byte(*pos);
  int length = first < 0x80 ? 1 : (first >> 5) == 0x6 ? 2 : (first >> 4) == 0xE ? 3
                                : (first >> 3) == 0x1E ? 4 : 0;
  *valid = length > 0 && *pos + length <= text.size();
  for (int i = 1; *valid && i < length; ++i) *valid = (byte(*pos + i) & 0xC0) == 0x80;
  if (!*valid) {
    ++*pos;
    return first;
  }
  char32_t code = length == 1 ? first : first & (0x7F >> length);
  for (int i = 1; i < length; ++i) code = (code << 6) | (byte(*pos + i) & 0x3F);
  *pos += length;
  return code;
}

bool InRanges(char32_t c, const std::initializer_list<std::pair<char32_t, char32_t>>& ranges) {
  for (const auto& [low, high] : ranges) {
    if (c >= low && c <= high) return true;
  }
  return false;
}

// Columns of one code point, as wcwidth() would say for the ranges that matter here
// (wcwidth itself depends on the locale, which the CLI does not set).
int CodePointWidth(char32_t c) {
  if (c < 0x20 || (c >= 0x7F && c < 0xA0)) return 0;
  if (InRanges(c, {{0x0300, 0x036F}, {0x0483, 0x0489}, {0x0591, 0x05BD}, {0x0610, 0x061A},
                   {0x064B, 0x065F}, {0x1AB0, 0x1AFF}, {0x1DC0, 0x1DFF}, {0x200B, 0x200F},
                   {0x20D0, 0x20FF}, {0xFE00, 0xFE0F}, {0xFE20, 0xFE2F}, {0xFEFF, 0xFEFF}})) {
    return 0;
  }
  if (InRanges(c, {{0x1100, 0x115F}, {0x2E80, 0x303E}, {0x3041, 0x33FF}, {0x3400, 0x4DBF},
                   {0x4E00, 0x9FFF}, {0xA000, 0xA4CF}, {0xAC00, 0xD7A3}, {0xF900, 0xFAFF},
                   {0xFE30, 0xFE4F}, {0xFF00, 0xFF60}, {0xFFE0, 0xFFE6}, {0x1F300, 0x1F64F},
                   {0x1F900, 0x1F9FF}, {0x20000, 0x3FFFD}})) {
    return 2;
  }
  return 1;
}

// The code points of text as byte ranges with their widths.
struct Glyph {
  size_t begin, end;
  int width;
};

std::vector<Glyph> Glyphs(absl::string_view text) {
  std::vector<Glyph> glyphs;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t begin = pos;
    bool valid;
    const char32_t c = NextCodePoint(text, &pos, &valid);
    glyphs.push_back({begin, pos, valid ? CodePointWidth(c) : 1});
  }
  return glyphs;
}

constexpr char kEllipsis[] = "\u2026";  // one column

std::string PadTo(const std::string& text, int width, bool right) {
  const int pad = std::max(0, width - DisplayWidth(text));
  return right ? std::string(pad, ' ') + text : text + std::string(pad, ' ');
}

}  // namespace

// ---- the terminal --------------------------------------------------------------------------

bool IsTerminal(int fd) { return isatty(fd) == 1; }

int TerminalColumns(int fd) {
  struct winsize size;
  std::memset(&size, 0, sizeof(size));
  if (!IsTerminal(fd) || ioctl(fd, TIOCGWINSZ, &size) != 0) return 0;
  return size.ws_col;
}

bool TerminalHasEscapes(int fd) {
  if (!IsTerminal(fd)) return false;
  const char* term = std::getenv("TERM");
  return term != nullptr && *term != '\0' && std::strcmp(term, "dumb") != 0;
}

bool ColourWanted(int fd) {
  const char* no_colour = std::getenv("NO_COLOR");
  return TerminalHasEscapes(fd) && (no_colour == nullptr || *no_colour == '\0');
}

void WatchTerminalResizes() {
  static std::once_flag installed;
  std::call_once(installed, [] {
    struct sigaction action;
    std::memset(&action, 0, sizeof(action));
    action.sa_handler = OnResize;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;  // no EINTR for the reads and writes of other threads
    sigaction(SIGWINCH, &action, nullptr);
  });
}

bool TakeTerminalResized() {
  if (!terminal_resized) return false;
  terminal_resized = 0;
  return true;
}

// ---- text ----------------------------------------------------------------------------------

int DisplayWidth(absl::string_view text) {
  int width = 0;
  for (const Glyph& g : Glyphs(text)) width += g.width;
  return width;
}

std::string TruncateToWidth(absl::string_view text, int width) {
  if (DisplayWidth(text) <= width) return std::string(text);
  if (width <= 0) return "";
  std::string out;
  int used = 0;
  for (const Glyph& g : Glyphs(text)) {
    if (used + g.width > width - 1) break;  // one column for the ellipsis
    absl::StrAppend(&out, text.substr(g.begin, g.end - g.begin));
    used += g.width;
  }
  return out + kEllipsis;
}

std::string ShortenMiddle(absl::string_view text, int prefix, int suffix) {
  const std::vector<Glyph> glyphs = Glyphs(text);
  const int count = static_cast<int>(glyphs.size());
  if (prefix < 0 || suffix < 0 || prefix + suffix + 1 >= count) return std::string(text);
  return absl::StrCat(text.substr(0, glyphs[prefix].begin), kEllipsis,
                      text.substr(glyphs[count - suffix].begin));
}

std::vector<std::string> ShortenUnique(const std::vector<std::string>& values, int min_prefix,
                                       int min_suffix) {
  const std::set<std::string> distinct(values.begin(), values.end());
  size_t longest = 0;
  for (const std::string& v : distinct) longest = std::max(longest, Glyphs(v).size());
  int prefix = std::max(0, min_prefix), suffix = std::max(0, min_suffix);
  // Grows the suffix first (the digits that differ between UIDs under one root are at the
  // end), the prefix every other step; stops at the latest when nothing is shortened.
  for (int step = 0;; ++step) {
    std::set<std::string> shorts;
    for (const std::string& v : distinct) shorts.insert(ShortenMiddle(v, prefix, suffix));
    if (shorts.size() == distinct.size() ||
        static_cast<size_t>(prefix + suffix + 1) >= longest) {
      break;
    }
    if (step % 2 == 0) ++suffix; else ++prefix;
  }
  std::vector<std::string> result;
  result.reserve(values.size());
  for (const std::string& v : values) result.push_back(ShortenMiddle(v, prefix, suffix));
  return result;
}

std::string Paint(absl::string_view text, Colour colour, bool enabled) {
  if (!enabled || colour == Colour::kNone || text.empty()) return std::string(text);
  const char* code = "";
  switch (colour) {
    case Colour::kBold: code = "1"; break;
    case Colour::kRed: code = "31"; break;
    case Colour::kGreen: code = "32"; break;
    case Colour::kYellow: code = "33"; break;
    case Colour::kCyan: code = "36"; break;
    case Colour::kDim: code = "2"; break;
    case Colour::kNone: break;
  }
  return absl::StrCat("\x1b[", code, "m", text, "\x1b[0m");
}

std::vector<std::string> WrapFields(const std::vector<std::string>& fields, int width,
                                    int indent, absl::string_view separator) {
  const int gap = DisplayWidth(separator);
  std::vector<std::string> lines;
  std::string line;
  int used = 0;
  bool has_field = false;  // on the current line
  for (const std::string& field : fields) {
    if (has_field && width > 0 && used + gap + DisplayWidth(field) > width) {
      lines.push_back(line);
      line = std::string(indent, ' ');
      used = indent;
      has_field = false;
    }
    if (has_field) {
      absl::StrAppend(&line, separator);
      used += gap;
    }
    const std::string fitted = width > 0 ? TruncateToWidth(field, width - used) : field;
    line += fitted;
    used += DisplayWidth(fitted);
    has_field = true;
  }
  lines.push_back(line);
  return lines;
}

// ---- tables --------------------------------------------------------------------------------

Table::Table(std::vector<TableColumn> columns) : columns_(std::move(columns)) {}

void Table::AddRow(std::vector<TableCell> cells) {
  cells.resize(columns_.size());
  rows_.push_back(std::move(cells));
}

std::vector<std::string> Table::Render(const TableOptions& options) const {
  const size_t n = columns_.size();
  // The text of each cell after shortening, by column.
  std::vector<std::vector<std::string>> text(n);
  for (size_t col = 0; col < n; ++col) {
    for (const auto& row : rows_) text[col].push_back(row[col].text);
    if (columns_[col].uid && !options.wide) text[col] = ShortenUnique(text[col]);
  }
  std::vector<int> widths(n);
  for (size_t col = 0; col < n; ++col) {
    widths[col] = DisplayWidth(columns_[col].header);
    for (const std::string& t : text[col]) widths[col] = std::max(widths[col], DisplayWidth(t));
  }
  // The last column gives way when the line would be too wide.
  if (options.max_width > 0 && !options.wide && n > 0) {
    int others = 0;
    for (size_t col = 0; col + 1 < n; ++col) others += widths[col] + 2;
    const int room = std::max(DisplayWidth(columns_[n - 1].header), options.max_width - others);
    if (widths[n - 1] > room) {
      widths[n - 1] = room;
      for (std::string& t : text[n - 1]) t = TruncateToWidth(t, room);
    }
  }
  auto line = [&](const std::vector<std::string>& cells, const std::vector<Colour>& colours) {
    std::string out;
    for (size_t col = 0; col < n; ++col) {
      const bool last = col + 1 == n;
      std::string cell = columns_[col].right_aligned || !last
                             ? PadTo(cells[col], widths[col], columns_[col].right_aligned)
                             : cells[col];
      if (options.colour && colours[col] != Colour::kNone) {
        // Colour the text, not the padding, so the columns stay aligned.
        const std::string& plain = cells[col];
        const size_t at = cell.find(plain);
        cell = cell.substr(0, at) + Paint(plain, colours[col], true) + cell.substr(at + plain.size());
      }
      if (col > 0) out += "  ";
      out += cell;
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out;
  };
  std::vector<std::string> lines;
  std::vector<std::string> headers;
  for (const TableColumn& c : columns_) headers.push_back(c.header);
  lines.push_back(line(headers, std::vector<Colour>(n, Colour::kNone)));
  for (size_t r = 0; r < rows_.size(); ++r) {
    std::vector<std::string> cells;
    std::vector<Colour> colours;
    for (size_t col = 0; col < n; ++col) {
      cells.push_back(text[col][r]);
      colours.push_back(rows_[r][col].colour);
    }
    lines.push_back(line(cells, colours));
  }
  return lines;
}

// ---- the progress line ---------------------------------------------------------------------

std::string LayoutProgressLine(absl::string_view label, double fraction,
                               absl::string_view essential,
                               const std::vector<ProgressField>& fields, int width) {
  constexpr int kBarMax = 30, kBarMin = 10;
  if (width <= 0) width = 80;
  const int budget = width - 1;  // never the last column: no pending wrap, no scroll
  fraction = std::clamp(fraction, 0.0, 1.0);
  const std::string percent = absl::StrCat(static_cast<int>(fraction * 100), "%");

  // Optional parts in display order: the label (kept longest), then the fields.
  struct Part {
    std::string text;
    int keep;
    bool shown = true;
  };
  std::vector<Part> optional;
  if (!label.empty()) optional.push_back({std::string(label), INT_MAX});
  for (const ProgressField& f : fields) {
    if (!f.text.empty()) optional.push_back({f.text, f.keep});
  }
  auto compose = [&](int bar) {
    const int filled = static_cast<int>(fraction * bar);
    std::string inner(filled, '=');
    if (filled < bar) inner += '>' + std::string(bar - filled - 1, ' ');
    std::string out;
    if (!label.empty() && optional.front().shown) out = absl::StrCat(label, " ");
    absl::StrAppend(&out, "[", inner, "] ", std::string(std::max(0, 4 - static_cast<int>(percent.size())), ' '),
                    percent);
    if (!essential.empty()) absl::StrAppend(&out, "  ", essential);
    for (size_t i = label.empty() ? 0 : 1; i < optional.size(); ++i) {
      if (optional[i].shown) absl::StrAppend(&out, "  ", optional[i].text);
    }
    return out;
  };
  // Drops parts, lowest keep first (the later one first among equals), until the line fits
  // with the narrowest comfortable bar.
  std::vector<size_t> order(optional.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return optional[a].keep != optional[b].keep ? optional[a].keep < optional[b].keep : a > b;
  });
  size_t dropped = 0;
  while (DisplayWidth(compose(kBarMin)) > budget && dropped < order.size()) {
    optional[order[dropped++]].shown = false;
  }
  const int spare = budget - DisplayWidth(compose(kBarMin));
  if (spare >= 0) return compose(std::min(kBarMax, kBarMin + spare));
  const int bar = std::max(1, kBarMin + spare);
  return TruncateToWidth(compose(bar), budget);
}

}  // namespace miseg::cli
