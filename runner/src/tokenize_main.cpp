// mdship-tokenize DIR: read prompts from stdin, print their CLIP token ids.
//
//   mdship-tokenize [--max-length N] [--no-padding] [--null] DIR
//
// Input: one prompt per line (a final line without '\n' counts; nothing else is stripped), or
// with --null, prompts separated by NUL bytes (so prompts may contain newlines).
// Output: one line per prompt, the ids separated by single spaces. By default exactly what
// mdship.tokenizer.tokenize() returns: bos, ids, eos, truncated to N (keeping eos) and padded
// with the pad token to N; N defaults to the tokenizer's model_max_length (77 for CLIP).
// --no-padding: bos, ids, eos truncated to N, not padded. --max-length 0 with --no-padding:
// no truncation. Exit codes: 0 ok, 2 usage error or unusable tokenizer directory.
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "clip_tokenizer.h"

namespace {

void usage(std::FILE* to) {
  std::fprintf(to,
               "usage: mdship-tokenize [--max-length N] [--no-padding] [--null] DIR\n"
               "Reads prompts from stdin (one per line, or NUL-separated with --null) and prints\n"
               "their CLIP token ids, one line per prompt, like mdship.tokenizer.tokenize().\n");
}

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "mdship-tokenize: error: %s\n", msg.c_str());
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  long max_length = -1;
  bool padding = true;
  char separator = '\n';
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      usage(stdout);
      return 0;
    } else if (a == "--max-length" || a == "-n") {
      if (i + 1 >= argc) die("--max-length needs a value");
      char* end = nullptr;
      max_length = std::strtol(argv[++i], &end, 10);
      if (*end != '\0' || max_length < 0) die(std::string("bad --max-length: ") + argv[i]);
    } else if (a == "--no-padding") {
      padding = false;
    } else if (a == "--null" || a == "-0") {
      separator = '\0';
    } else if (!a.empty() && a[0] == '-') {
      usage(stderr);
      die("unknown option " + a);
    } else if (dir.empty()) {
      dir = a;
    } else {
      usage(stderr);
      die("more than one directory given");
    }
  }
  if (dir.empty()) {
    usage(stderr);
    return 2;
  }
  try {
    const mdship::ClipTokenizer tok = mdship::ClipTokenizer::from_directory(dir);
    const size_t n = max_length < 0 ? tok.model_max_length() : static_cast<size_t>(max_length);
    if (n == 1 || (n == 0 && padding)) die("--max-length must be >= 2 (0 only with --no-padding)");
    std::ios::sync_with_stdio(false);
    std::string prompt, line;
    std::vector<int32_t> ids;
    while (std::getline(std::cin, prompt, separator)) {
      ids = padding ? tok.encode_padded(prompt, n) : tok.encode(prompt, n);
      line.clear();
      for (size_t k = 0; k < ids.size(); ++k) {
        if (k) line.push_back(' ');
        line += std::to_string(ids[k]);
      }
      line.push_back('\n');
      std::cout << line;
    }
    std::cout.flush();
    if (!std::cout) die("cannot write to stdout");
  } catch (const mdship::TokenizerError& e) {
    die(e.what());
  }
  return 0;
}
