// What `miseg` knows about the terminal it writes to, and the text layout that depends on it:
// the width of a file descriptor's terminal (TIOCGWINSZ, re-read after SIGWINCH), whether
// colour is wanted there (a terminal, TERM not "dumb", NO_COLOR unset), display widths of
// UTF-8 text in columns (not bytes), UIDs shortened in the middle so that they stay unique
// within a listing, tables with columns sized to their content, and the progress line that
// drops its least important fields to fit.
//
// Everything here except the terminal queries is a pure function of its arguments, so the
// layout is tested without a terminal (tests/client/cli_terminal_test.cc). Thread safety:
// the functions may be called from any thread; the SIGWINCH flag is a sig_atomic_t that the
// handler only sets.
#ifndef MISEG_CLIENT_CLI_TERMINAL_H_
#define MISEG_CLIENT_CLI_TERMINAL_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace miseg::cli {

// ---- the terminal --------------------------------------------------------------------------

bool IsTerminal(int fd);
// Columns of the terminal on fd (TIOCGWINSZ), or 0 when fd is not a terminal or says 0.
int TerminalColumns(int fd);
// Whether escape codes other than colour may be written to fd: a terminal whose TERM is set
// and not "dumb". The progress bar needs it for \x1b[K; without it the bar pads with spaces.
bool TerminalHasEscapes(int fd);
// Whether to colour what goes to fd: TerminalHasEscapes(fd) and NO_COLOR unset or empty
// (https://no-color.org: "when present and not an empty string").
bool ColourWanted(int fd);

// Installs a SIGWINCH handler (once per process; it only sets a flag).
void WatchTerminalResizes();
// True once after each SIGWINCH (the flag is cleared by the call).
bool TakeTerminalResized();

// ---- text ----------------------------------------------------------------------------------

// Columns that UTF-8 text takes on a terminal: 0 for control characters and combining
// marks, 2 for East Asian wide and fullwidth characters and emoji, 1 otherwise (an invalid
// byte counts as one column). Text must not contain escape sequences.
int DisplayWidth(absl::string_view text);
// The longest prefix of text that fits in width columns, ending in "…" (U+2026) when cut.
std::string TruncateToWidth(absl::string_view text, int width);
// text with everything but its first `prefix` and last `suffix` characters replaced by "…",
// or text itself when that would not make it shorter.
std::string ShortenMiddle(absl::string_view text, int prefix, int suffix);
// Shortens every value with the same prefix and suffix lengths, the smallest (from
// min_prefix, min_suffix up) at which no two different values get the same short form, so
// each short form matches (starts with its prefix, ends with its suffix) exactly one of the
// values. Equal values get equal short forms. The result is parallel to values.
std::vector<std::string> ShortenUnique(const std::vector<std::string>& values, int min_prefix = 7,
                                       int min_suffix = 5);

// SGR colours for states and headers; Paint returns text unchanged when !enabled.
enum class Colour { kNone, kBold, kRed, kGreen, kYellow, kCyan, kDim };
std::string Paint(absl::string_view text, Colour colour, bool enabled);

// Lines of at most width columns from fields joined by separator: a field that does not
// fit on the line starts the next one, indented by `indent` spaces; a field longer than a
// whole line is cut (TruncateToWidth). width <= 0: one line, nothing cut.
std::vector<std::string> WrapFields(const std::vector<std::string>& fields, int width,
                                    int indent = 4, absl::string_view separator = "  ");

// ---- tables --------------------------------------------------------------------------------

struct TableColumn {
  std::string header;
  bool right_aligned = false;  // numbers
  bool uid = false;            // shortened with ShortenUnique unless wide
};

struct TableCell {
  std::string text;
  Colour colour = Colour::kNone;
};

struct TableOptions {
  bool wide = false;    // full UIDs, nothing cut
  bool colour = false;  // SGR codes around coloured cells
  // > 0 and not wide: the last column is cut (with "…") so that no line exceeds this many
  // columns; the other columns are never cut.
  int max_width = 0;
};

// A listing: a header line and one line per row, each column as wide as its widest cell,
// two spaces between columns, no trailing spaces.
class Table {
 public:
  explicit Table(std::vector<TableColumn> columns);
  // cells.size() must equal the number of columns.
  void AddRow(std::vector<TableCell> cells);
  std::vector<std::string> Render(const TableOptions& options) const;

 private:
  std::vector<TableColumn> columns_;
  std::vector<std::vector<TableCell>> rows_;
};

// ---- the progress line ---------------------------------------------------------------------

struct ProgressField {
  std::string text;
  // Fields with the lowest keep are dropped first when the line is too wide.
  int keep = 0;
};

// One progress line shorter than `width` columns (<= 0: 80), so that it never wraps and
// a carriage return redraws it in place:
//   LABEL [=====>     ]  36%  ESSENTIAL  FIELD  FIELD ...
// The bar, the percentage and `essential` (e.g. "step 107/300") always show. The bar takes
// up to 30 columns of what is left; rather than narrow it below 10, the fields are dropped,
// lowest keep first, then the label; past that the bar shrinks to 1 column, and only a
// terminal narrower than about 25 columns sees the line cut.
std::string LayoutProgressLine(absl::string_view label, double fraction,
                               absl::string_view essential,
                               const std::vector<ProgressField>& fields, int width);

}  // namespace miseg::cli

#endif  // MISEG_CLIENT_CLI_TERMINAL_H_
