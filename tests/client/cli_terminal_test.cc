// The CLI's text layout without a terminal: display widths, UIDs shortened in the middle
// and unique, tables sized to their content, wrapped fields and the progress line that
// never reaches the terminal's width. The same layout on a real terminal (tmux) against a
// real server is cli_screen_e2e_test.py.
#include "client/cli/terminal.h"

#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace miseg::cli {
namespace {

constexpr char kEllipsis[] = "\u2026";

TEST(DisplayWidth, CountsColumnsNotBytes) {
  EXPECT_EQ(DisplayWidth(""), 0);
  EXPECT_EQ(DisplayWidth("abc"), 3);
  EXPECT_EQ(DisplayWidth(kEllipsis), 1);               // 3 bytes, 1 column
  EXPECT_EQ(DisplayWidth("e\u0301"), 1);               // combining acute accent
  EXPECT_EQ(DisplayWidth("\u5fc3\u81d3"), 4);          // two wide CJK characters
  EXPECT_EQ(DisplayWidth("\xff" "a"), 2);              // an invalid byte counts as one
  EXPECT_EQ(DisplayWidth("\xe2\x80"), 2);              // a cut sequence: byte by byte
}

TEST(TruncateToWidth, CutsWithAnEllipsisAtWholeCharacters) {
  EXPECT_EQ(TruncateToWidth("short", 10), "short");
  EXPECT_EQ(TruncateToWidth("abcdefghij", 5), absl::StrCat("abcd", kEllipsis));
  EXPECT_EQ(DisplayWidth(TruncateToWidth("abcdefghij", 5)), 5);
  // A wide character that would straddle the limit is left out whole.
  const std::string cut = TruncateToWidth("ab\u5fc3\u81d3", 4);
  EXPECT_EQ(cut, absl::StrCat("ab", kEllipsis));
  EXPECT_LE(DisplayWidth(cut), 4);
  EXPECT_EQ(TruncateToWidth("abc", 0), "");
}

TEST(ShortenMiddle, KeepsPrefixAndSuffix) {
  EXPECT_EQ(ShortenMiddle("1.2.826.0.1.3680043.2.1125.158209", 7, 5),
            absl::StrCat("1.2.826", kEllipsis, "58209"));
  // Not shortened when it would not get shorter.
  EXPECT_EQ(ShortenMiddle("1.2.3.4.5", 4, 4), "1.2.3.4.5");
  EXPECT_EQ(ShortenMiddle("1234567890123", 7, 5), "1234567890123");
  EXPECT_EQ(ShortenMiddle("12345678901234", 7, 5), absl::StrCat("1234567", kEllipsis, "01234"));
}

// Whether `shortened` matches `value`: starts with the part before the ellipsis and ends
// with the part after it (or is it).
bool Matches(const std::string& shortened, const std::string& value) {
  const size_t at = shortened.find(kEllipsis);
  if (at == std::string::npos) return shortened == value;
  const std::string prefix = shortened.substr(0, at);
  const std::string suffix = shortened.substr(at + std::string(kEllipsis).size());
  return value.size() >= prefix.size() + suffix.size() && absl::StartsWith(value, prefix) &&
         absl::EndsWith(value, suffix);
}

TEST(ShortenUnique, GrowsUntilEachShortFormMatchesOneValue) {
  // Same first seven and last five characters: the suffix must grow past them.
  const std::string root = "2.25.99999", tail = "58209";
  const std::vector<std::string> uids = {root + std::string(25, '1') + tail, root + std::string(25, '2') + tail,
                                         root + std::string(25, '3') + tail, root + std::string(25, '1') + tail};
  const std::vector<std::string> shorts = ShortenUnique(uids);
  ASSERT_EQ(shorts.size(), uids.size());
  EXPECT_EQ(shorts[0], shorts[3]);  // equal values, equal short forms
  for (size_t i = 0; i < shorts.size(); ++i) {
    EXPECT_TRUE(absl::StrContains(shorts[i], kEllipsis)) << shorts[i];
    EXPECT_LT(shorts[i].size(), uids[i].size());
    for (size_t j = 0; j < uids.size(); ++j) {
      EXPECT_EQ(Matches(shorts[i], uids[j]), uids[i] == uids[j]) << shorts[i] << " " << uids[j];
    }
  }
  EXPECT_EQ(shorts[0], absl::StrCat("2.25.99", kEllipsis, "158209"));
}

TEST(ShortenUnique, DifferentOnlyInTheMiddleKeepsThemWhole) {
  const std::vector<std::string> uids = {"1.2.3.4.5.6.7.8.9.0.1.2.3.4.5.6", "1.2.3.4.5.6.7.9.9.0.1.2.3.4.5.6"};
  const std::vector<std::string> shorts = ShortenUnique(uids);
  EXPECT_NE(shorts[0], shorts[1]);
  EXPECT_TRUE(Matches(shorts[0], uids[0]) && !Matches(shorts[0], uids[1]));
  EXPECT_TRUE(Matches(shorts[1], uids[1]) && !Matches(shorts[1], uids[0]));
}

TEST(ShortenUnique, SmallestFormWhenAlreadyDistinct) {
  const std::vector<std::string> shorts =
      ShortenUnique({"2.25.47757047513951329711052573774691938095", "2.25.25919969774176489376501372335224261834"});
  EXPECT_EQ(shorts[0], absl::StrCat("2.25.47", kEllipsis, "38095"));
  EXPECT_EQ(shorts[1], absl::StrCat("2.25.25", kEllipsis, "61834"));
  EXPECT_TRUE(ShortenUnique({}).empty());
}

TEST(WrapFields, BreaksBetweenFieldsWithinTheWidth) {
  const std::vector<std::string> fields = {"step 100", "validation Dice", "right_ventricle 0.174",
                                           "myocardium 0.000", "left_ventricle 0.761", "(mean 0.312)"};
  const std::vector<std::string> one = WrapFields(fields, 0);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0], "step 100  validation Dice  right_ventricle 0.174  myocardium 0.000  "
                    "left_ventricle 0.761  (mean 0.312)");
  for (int width : {80, 60, 40, 20, 12}) {
    const std::vector<std::string> lines = WrapFields(fields, width);
    EXPECT_GT(lines.size(), 1u) << width;
    for (size_t i = 0; i < lines.size(); ++i) {
      EXPECT_LE(DisplayWidth(lines[i]), width) << width << ": " << lines[i];
      if (i > 0) {
        EXPECT_TRUE(absl::StartsWith(lines[i], "    ")) << lines[i];
      }
    }
  }
  EXPECT_EQ(WrapFields({"job", "7", "failed:", "out", "of", "memory"}, 20, 4, " "),
            (std::vector<std::string>{"job 7 failed: out of", "    memory"}));
}

TEST(Table, SizesColumnsToContentAndShortensUids) {
  Table table({{"SERIES", false, true}, {"ROLE"}, {"SLICES", true}});
  table.AddRow({{"2.25.47757047513951329711052573774691938095"}, {"labeled"}, {"6"}});
  table.AddRow({{"2.25.25919969774176489376501372335224261834"}, {"unlabeled"}, {"12"}});
  const std::vector<std::string> lines = table.Render({});
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0], "SERIES         ROLE       SLICES");
  EXPECT_EQ(lines[1], absl::StrCat("2.25.47", kEllipsis, "38095  labeled         6"));
  EXPECT_EQ(lines[2], absl::StrCat("2.25.25", kEllipsis, "61834  unlabeled      12"));
  TableOptions wide;
  wide.wide = true;
  EXPECT_EQ(table.Render(wide)[1],
            "2.25.47757047513951329711052573774691938095  labeled         6");
}

TEST(Table, CutsOnlyTheLastColumnToTheWidthAndColoursWithoutMisaligning) {
  Table table({{"ID", true}, {"STATE"}, {"LAST ERROR"}});
  table.AddRow({{"1"}, {"failed", Colour::kRed}, {std::string(100, 'x')}});
  table.AddRow({{"22"}, {"delivered", Colour::kGreen}, {"-"}});
  TableOptions options;
  options.max_width = 40;
  for (const std::string& line : table.Render(options)) EXPECT_LE(DisplayWidth(line), 40) << line;
  EXPECT_TRUE(absl::EndsWith(table.Render(options)[1], kEllipsis));
  options.wide = true;  // nothing cut
  EXPECT_GT(DisplayWidth(table.Render(options)[1]), 100);
  options = {};
  options.colour = true;
  const std::vector<std::string> coloured = table.Render(options);
  EXPECT_TRUE(absl::StartsWith(coloured[1], " 1  \x1b[31mfailed\x1b[0m   ")) << coloured[1];
  EXPECT_TRUE(absl::StartsWith(coloured[2], "22  \x1b[32mdelivered\x1b[0m  -")) << coloured[2];
  options.colour = false;
  for (const std::string& line : table.Render(options)) EXPECT_EQ(line.find('\x1b'), std::string::npos);
}

std::vector<ProgressField> TrainingFields() {
  return {{"10.05 steps/s", 5}, {"ETA 19s", 6},      {"loss 0.1234", 4},
          {"sup 0.1234", 3},    {"cons 0.0123", 2}, {"mi -0.0012", 1}};
}

TEST(LayoutProgressLine, EverythingOnAWideTerminal) {
  const std::string line = LayoutProgressLine("job 1", 0.36, "step 107/300", TrainingFields(), 160);
  EXPECT_EQ(line, "job 1 [==========>                   ]  36%  step 107/300  10.05 steps/s  ETA 19s  "
                  "loss 0.1234  sup 0.1234  cons 0.0123  mi -0.0012");
}

TEST(LayoutProgressLine, NeverReachesTheWidthAndKeepsBarStepAndPercent) {
  for (int width = 10; width <= 200; ++width) {
    const std::string line = LayoutProgressLine("job 1", 0.36, "step 107/300", TrainingFields(), width);
    ASSERT_LT(DisplayWidth(line), width) << width << ": " << line;
    if (width >= 26) {
      EXPECT_TRUE(absl::StrContains(line, "36%")) << width << ": " << line;
      EXPECT_TRUE(absl::StrContains(line, "step 107/300")) << width << ": " << line;
      EXPECT_TRUE(absl::StrContains(line, "[") && absl::StrContains(line, "]")) << line;
    }
  }
}

TEST(LayoutProgressLine, DropsTheLossTermsThenTheRateThenTheEta) {
  // At 80 columns: the loss terms go first, the MI term before the total loss.
  const std::string at80 = LayoutProgressLine("job 1", 0.36, "step 107/300", TrainingFields(), 80);
  EXPECT_TRUE(absl::StrContains(at80, "steps/s") && absl::StrContains(at80, "ETA 19s")) << at80;
  EXPECT_FALSE(absl::StrContains(at80, "mi -0.0012")) << at80;
  // Narrower: the rate goes before the ETA, the ETA before the label.
  const std::string at55 = LayoutProgressLine("job 1", 0.36, "step 107/300", TrainingFields(), 55);
  EXPECT_FALSE(absl::StrContains(at55, "loss")) << at55;
  EXPECT_FALSE(absl::StrContains(at55, "steps/s")) << at55;
  EXPECT_TRUE(absl::StrContains(at55, "ETA 19s")) << at55;
  EXPECT_TRUE(absl::StartsWith(at55, "job 1 [")) << at55;
  const std::string at40 = LayoutProgressLine("job 1", 0.36, "step 107/300", TrainingFields(), 40);
  EXPECT_FALSE(absl::StrContains(at40, "ETA")) << at40;
  // Narrowest: the label goes, then the bar shrinks below its comfortable 10 columns.
  const std::string at30 = LayoutProgressLine("job 1", 0.36, "step 107/300", TrainingFields(), 30);
  EXPECT_TRUE(absl::StartsWith(at30, "[")) << at30;
  EXPECT_TRUE(absl::EndsWith(at30, "36%  step 107/300")) << at30;
  EXPECT_EQ(DisplayWidth(at30), 29) << at30;
}

TEST(LayoutProgressLine, FullAndEmptyBars) {
  EXPECT_EQ(LayoutProgressLine("", 1.0, "3/3", {}, 50), "[==============================] 100%  3/3");
  EXPECT_EQ(LayoutProgressLine("", 1.0, "3/3", {}, 40), "[===========================] 100%  3/3");
  EXPECT_EQ(LayoutProgressLine("", 0.0, "", {}, 20), "[>           ]   0%");
  EXPECT_EQ(LayoutProgressLine("", 2.0, "", {}, 0).substr(0, 32), "[==============================]");
}

}  // namespace
}  // namespace miseg::cli
