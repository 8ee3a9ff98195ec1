# fedllm — top-level entry points. Everything goes through CMake; these targets install what they
# need first (scripts/bootstrap) so that a fresh Debian machine needs nothing else.
BUILD      ?= build
BUILD_ASAN ?= build-asan
JOBS       ?= $(shell nproc)
# Tests run two at a time on two cores: threads that wait passively do not steal the core the
# other test needs (spinning waits made the suite 4x slower).
CTEST_ENV  := OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive

.PHONY: all build test test-fast test-asan demo bench format clean

all: build

build:
	@scripts/bootstrap
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DFEDLLM_WERROR=ON >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# The whole suite, then again under AddressSanitizer + UndefinedBehaviorSanitizer.
test: test-fast test-asan

test-fast: build
	cd $(BUILD) && $(CTEST_ENV) ctest --output-on-failure -j 2

test-asan:
	@scripts/bootstrap
	@cmake -S . -B $(BUILD_ASAN) -DFEDLLM_SANITIZE=ON -DFEDLLM_WERROR=ON >/dev/null
	@cmake --build $(BUILD_ASAN) -j $(JOBS)
	cd $(BUILD_ASAN) && $(CTEST_ENV) ASAN_OPTIONS=detect_leaks=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j 2

demo: build
	@scripts/demo

# Engine throughput beside PyTorch's twin (installs Debian's python3-torch for the twin).
bench: build
	@scripts/bench

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)
