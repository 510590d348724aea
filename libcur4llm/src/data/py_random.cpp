// Python's random.Random: MT19937 seeded by init_by_array with the seed's
// 32-bit words (CPython Modules/_randommodule.c), and the integer draws of
// Lib/random.py (randint -> randrange -> _randbelow_with_getrandbits).

#include "cur4llm/data/text_data.h"

#include <stdexcept>
#include <string>

namespace cur4llm::data {

namespace {

constexpr int kN = 624;
constexpr int kM = 397;

void init_genrand(uint32_t* mt, uint32_t s) {
  mt[0] = s;
  for (int i = 1; i < kN; ++i) {
    mt[i] = 1812433253u * (mt[i - 1] ^ (mt[i - 1] >> 30)) + static_cast<uint32_t>(i);
  }
}

void init_by_array(uint32_t* mt, const uint32_t* key, int key_length) {
  init_genrand(mt, 19650218u);
  int i = 1;
  int j = 0;
  for (int k = kN > key_length ? kN : key_length; k > 0; --k) {
    mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1664525u)) + key[j] + static_cast<uint32_t>(j);
    ++i;
    ++j;
    if (i >= kN) {
      mt[0] = mt[kN - 1];
      i = 1;
    }
    if (j >= key_length) j = 0;
  }
  for (int k = kN - 1; k > 0; --k) {
    mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1566083941u)) - static_cast<uint32_t>(i);
    ++i;
    if (i >= kN) {
      mt[0] = mt[kN - 1];
      i = 1;
    }
  }
  mt[0] = 0x80000000u;  // MSB is 1, assuring a non-zero initial array
}

int bit_length(uint64_t n) {
  int k = 0;
  while (n) {
    ++k;
    n >>= 1;
  }
  return k;
}

}  // namespace

PyRandom::PyRandom(uint64_t seed) {
  // random.seed(int) uses abs(seed) as little-endian 32-bit words; 0 gives one word.
  uint32_t key[2] = {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  init_by_array(state_, key, key[1] ? 2 : 1);
  index_ = kN;
}

uint32_t PyRandom::next_u32() {
  static constexpr uint32_t mag01[2] = {0x0u, 0x9908b0dfu};
  constexpr uint32_t upper = 0x80000000u;
  constexpr uint32_t lower = 0x7fffffffu;
  if (index_ >= kN) {
    int kk = 0;
    for (; kk < kN - kM; ++kk) {
      const uint32_t y = (state_[kk] & upper) | (state_[kk + 1] & lower);
      state_[kk] = state_[kk + kM] ^ (y >> 1) ^ mag01[y & 0x1u];
    }
    for (; kk < kN - 1; ++kk) {
      const uint32_t y = (state_[kk] & upper) | (state_[kk + 1] & lower);
      state_[kk] = state_[kk + (kM - kN)] ^ (y >> 1) ^ mag01[y & 0x1u];
    }
    const uint32_t y = (state_[kN - 1] & upper) | (state_[0] & lower);
    state_[kN - 1] = state_[kM - 1] ^ (y >> 1) ^ mag01[y & 0x1u];
    index_ = 0;
  }
  uint32_t y = state_[index_++];
  y ^= (y >> 11);
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= (y >> 18);
  return y;
}

uint64_t PyRandom::getrandbits(int k) {
  if (k <= 0 || k > 64) {
    throw std::invalid_argument("PyRandom::getrandbits: k must be in [1, 64], got " + std::to_string(k));
  }
  if (k <= 32) return next_u32() >> (32 - k);
  // Words fill from the least significant end; the last one is cut to the bits left.
  const uint64_t low = next_u32();
  const uint64_t high = next_u32() >> (64 - k);
  return low | (high << 32);
}

int64_t PyRandom::randint(int64_t a, int64_t b) {
  if (a > b) {
    throw std::invalid_argument("PyRandom::randint: empty range [" + std::to_string(a) + ", " +
                                std::to_string(b) + "]");
  }
  // n = b - a + 1 in unsigned arithmetic; 0 stands for 2^64 (the whole int64 range).
  const uint64_t n = static_cast<uint64_t>(b) - static_cast<uint64_t>(a) + 1u;
  uint64_t r;
  if (n == 0) {
    r = getrandbits(64);
  } else {
    const int k = bit_length(n);
    do {
      r = getrandbits(k);
    } while (r >= n);
  }
  return static_cast<int64_t>(static_cast<uint64_t>(a) + r);
}

}  // namespace cur4llm::data
