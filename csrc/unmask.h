// Codes every unmask backend shares (CPU, CUDA, the torch glue). No torch or CUDA headers.
#pragma once

namespace mini_dlm {

enum Kind { LOW_CONFIDENCE = 0, MARGIN = 1, ENTROPY = 2, RANDOM = 3 };  // how a guess is scored
enum Rule { SCHEDULE = 0, THRESHOLD = 1, FACTOR = 2 };                  // which guesses commit

}  // namespace mini_dlm
