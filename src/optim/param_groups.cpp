#include "holocron/optim/param_groups.h"

#include <cmath>
#include <cstddef>
#include <utility>
#include <sstream>
#include <stdexcept>
#include <unordered_set>

namespace holocron::optim {

namespace {

// A pattern as Python's fnmatch.translate (3.11) reads it: `*` any text, `?` one character,
// `[...]` one character of a set (a `!` first negates it; ranges run low to high and an empty
// one is dropped; an empty set matches nothing, `[!]`-like empty negated sets anything), an
// unclosed `[` itself; every other character, `^` and backslashes included, itself.
struct Token {
  enum Kind { kStar, kChar } kind = kChar;
  bool negated = false;
  std::vector<std::pair<unsigned char, unsigned char>> ranges;  // inclusive

  bool matches(unsigned char c) const {
    bool in = false;
    for (const auto& [low, high] : ranges) in = in || (low <= c && c <= high);
    return in != negated;
  }
};

std::vector<Token> tokens_of(const std::string& pattern) {
  const auto byte = [](char c) { return static_cast<unsigned char>(c); };
  std::vector<Token> tokens;
  const size_t n = pattern.size();
  size_t i = 0;
  while (i < n) {
    const char c = pattern[i++];
    Token token;
    if (c == '*') {
      token.kind = Token::kStar;
      while (i < n && pattern[i] == '*') ++i;
    } else if (c == '?') {
      token.negated = true;  // no range: any character
    } else if (c == '[') {
      size_t j = i;
      if (j < n && pattern[j] == '!') ++j;
      if (j < n && pattern[j] == ']') ++j;
      while (j < n && pattern[j] != ']') ++j;
      if (j >= n) {
        token.ranges.push_back({byte('['), byte('[')});
      } else {
        token.negated = pattern[i] == '!';
        // Chunks between the dashes that make ranges (not a set's first character).
        std::vector<std::string> chunks;
        size_t start = i;
        size_t k = (token.negated ? i + 1 : i) + 1;
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
        for (size_t m = chunks.size() - 1; m > 0; --m) {  // empty ranges are dropped
          if (byte(chunks[m - 1].back()) > byte(chunks[m].front())) {
            chunks[m - 1] = chunks[m - 1].substr(0, chunks[m - 1].size() - 1) + chunks[m].substr(1);
            chunks.erase(chunks.begin() + static_cast<std::ptrdiff_t>(m));
          }
        }
        // Each chunk's characters, the last of one and the first of the next making a range.
        for (size_t m = 0; m < chunks.size(); ++m) {
          for (size_t q = (m == 0 && token.negated) ? 1 : 0; q < chunks[m].size(); ++q) {
            if (m > 0 && q == 0 && !token.ranges.empty()) {
              token.ranges.back().second = byte(chunks[m][q]);
            } else {
              token.ranges.push_back({byte(chunks[m][q]), byte(chunks[m][q])});
            }
          }
        }
        i = j + 1;
      }
    } else {
      token.ranges.push_back({byte(c), byte(c)});
    }
    tokens.push_back(std::move(token));
  }
  return tokens;
}

}  // namespace

bool name_matches(const std::string& name, const std::string& pattern) {
  // Every token but `*` takes one character: on a mismatch, the last `*` takes one more.
  const auto tokens = tokens_of(pattern);
  size_t t = 0, s = 0, star = std::string::npos, star_s = 0;
  while (s < name.size()) {
    if (t < tokens.size() && tokens[t].kind == Token::kStar) {
      star = t++;
      star_s = s;
    } else if (t < tokens.size() && tokens[t].matches(static_cast<unsigned char>(name[s]))) {
      ++t;
      ++s;
    } else if (star != std::string::npos) {
      t = star + 1;
      s = ++star_s;
    } else {
      return false;
    }
  }
  while (t < tokens.size() && tokens[t].kind == Token::kStar) ++t;
  return t == tokens.size();
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
