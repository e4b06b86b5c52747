# Nova: `make run` starts the server, `make test` runs every check, `make bench` measures.
# Each target installs the Debian/Ubuntu packages it needs when they are missing.

CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# ffmpeg's libraries (the media crate links them), clang for ffmpeg-next's bindings.
BUILD_PACKAGES := libavcodec-dev libavformat-dev libavutil-dev libswscale-dev \
	libswresample-dev libavfilter-dev libavdevice-dev clang libclang-dev pkg-config
# The mail tests run a real SMTP server: Python's aiosmtpd, installed from PyPI into a venv.
# The ffmpeg command makes the media tests' inputs and checks their outputs (Nova never runs it).
TEST_PACKAGES := python3-venv ffmpeg
PYENV := target/pyenv
# taskset pins the server and the load generator to separate cores.
BENCH_PACKAGES := util-linux

.PHONY: run test bench lint deps bench-deps clean pyenv bench-search bench-backup

define install_missing
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
endef

deps:
	$(call install_missing,$(BUILD_PACKAGES) $(TEST_PACKAGES))

# aiosmtpd for shards/tests/mail*.rs (they look for $(PYENV)/bin/python, or NOVA_TEST_PYTHON).
pyenv: deps
	@$(PYENV)/bin/python -c 'import aiosmtpd' 2>/dev/null || \
		{ python3 -m venv $(PYENV) && $(PYENV)/bin/pip install -q 'aiosmtpd==1.4.6'; }

bench-deps: deps
	$(call install_missing,$(BENCH_PACKAGES))

run: deps
	$(CARGO) run --release -p nova-shards --bin nova -- serve $(ARGS)

test: deps lint pyenv
	$(CARGO) test --workspace --all-targets

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: bench-deps
	./scripts/bench.sh

# Search: 1,000,000 imported posts, index build rate, two-word queries at 1,000/s.
bench-search: deps
	./scripts/bench-search.sh

# Online backup: MB/s of database and media, and a read route's p99 before and during it.
bench-backup: deps
	./scripts/bench-backup.sh

# Messaging: messages/s and send-to-stream latency over 2 shards; 10,000 idle streams' memory.
.PHONY: bench-msg
bench-msg: bench-deps
	./scripts/bench-msg.sh

clean:
	$(CARGO) clean
