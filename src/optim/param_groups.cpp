#include "holocron/optim/param_groups.h"

#include <cmath>
#include <cstddef>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <unordered_set>

namespace holocron::optim {

namespace {

// The regular expression Python's fnmatch.translate (3.11) makes of `pattern`, in
// ECMAScript syntax: `*` any text, `?` one character, `[...]` a set whose `!` negates and
// whose ranges run low to high (an empty range is dropped, an empty set matches nothing,
// `[!]` anything), an unclosed `[` itself; everything else, `^` and backslashes included,
// literally.
std::string fnmatch_regex(const std::string& pattern) {
  const auto escape = [](char c, bool in_set) {
    static const std::string syntax = "^$\\.*+?()[]{}|/-&~";
    std::string out;
    if (syntax.find(c) != std::string::npos && (in_set || c != '-')) out += '\\';
    out += c;
    return out;
  };
  std::string out;
  const size_t n = pattern.size();
  size_t i = 0;
  while (i < n) {
    const char c = pattern[i++];
    if (c == '*') {
      while (i < n && pattern[i] == '*') ++i;
      out += "[\\s\\S]*";
    } else if (c == '?') {
      out += "[\\s\\S]";
    } else if (c == '[') {
      size_t j = i;
      if (j < n && pattern[j] == '!') ++j;
      if (j < n && pattern[j] == ']') ++j;
      while (j < n && pattern[j] != ']') ++j;
      if (j >= n) {
        out += "\\[";
        continue;
      }
      const bool negated = pattern[i] == '!';
      // The set's items: ranges split at each '-' that is not the set's first character.
      std::vector<std::string> chunks;
      size_t start = i;
      size_t k = (negated ? i + 1 : i) + 1;
      while (true) {
        const size_t dash = pattern.find('-', k);
        if (dash == std::string::npos || dash >= j) break;
        chunks.push_back(pattern.substr(start, dash - start));
        start = dash + 1;
        k = dash + 3;
      }
      const std::string last = pattern.substr(start, j - start);
      if (!last.empty()) {
        chunks.push_back(last);
      } else {
        chunks.back() += '-';
      }
      for (size_t m = chunks.size() - 1; m > 0; --m) {  // drop empty ranges, as Python does
        if (chunks[m - 1].back() > chunks[m].front()) {
          chunks[m - 1] = chunks[m - 1].substr(0, chunks[m - 1].size() - 1) + chunks[m].substr(1);
          chunks.erase(chunks.begin() + static_cast<std::ptrdiff_t>(m));
        }
      }
      // Chunks joined by range dashes; the leading '!' of a negated set is not a member.
      std::string members;
      for (size_t m = 0; m < chunks.size(); ++m) {
        if (m > 0) members += '-';
        const size_t from = (m == 0 && negated) ? 1 : 0;
        for (size_t q = from; q < chunks[m].size(); ++q) members += escape(chunks[m][q], true);
      }
      i = j + 1;
      if (members.empty()) {
        out += negated ? "[\\s\\S]" : "(?!)";
      } else {
        out += negated ? "[^" + members + "]" : "[" + members + "]";
      }
    } else {
      out += escape(c, false);
    }
  }
  return out;
}

}  // namespace

bool name_matches(const std::string& name, const std::string& pattern) {
  return std::regex_match(name, std::regex(fnmatch_regex(pattern), std::regex::ECMAScript));
}

namespace detail {

WeightDecaySplit split_by_weight_decay(const torch::nn::Module& module, double weight_decay,
                                       const std::vector<std::string>& no_weight_decay_names,
                                       bool exclude_1d) {
  if (!(std::isfinite(weight_decay) && weight_decay >= 0.0)) {
    std::ostringstream message;
    message << "param_groups_weight_decay: invalid weight_decay value: " << weight_decay
            << " (expected in [0, inf))";
    throw std::invalid_argument(message.str());
  }
  WeightDecaySplit split;
  // LibTorch lists a parameter shared by several modules once per module; Python's
  // named_parameters, which timm reads, once.
  std::unordered_set<const void*> seen;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    const auto& name = item.key();
    const auto& param = item.value();
    if (!seen.insert(param.unsafeGetTensorImpl()).second || !param.requires_grad()) continue;
    bool decays = weight_decay != 0.0;
    if (decays && exclude_1d) {
      const std::string suffix = ".bias";
      const bool is_bias = name.size() >= suffix.size() &&
                           name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
      decays = param.dim() > 1 && !is_bias;
    }
    for (const auto& pattern : no_weight_decay_names) {
      if (decays && name_matches(name, pattern)) decays = false;
    }
    (decays ? split.decay : split.no_decay).push_back(param);
  }
  return split;
}

}  // namespace detail

}  // namespace holocron::optim
