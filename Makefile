# The README's two commands: `make demo` and `make test`. Both create .venv if absent.
# The pins live in requirements.txt (setup.py reads the same file).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONWARNINGS ?= ignore::FutureWarning

.PHONY: demo test benchmark install clean

install: $(STAMP)

$(STAMP): requirements.txt setup.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else \
		"mtssl_tf needs Python 3.11 (TF 2.15 stack); found " + sys.version.split()[0] + \
		". Set PYTHON=/path/to/python3.11.")'
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mtssl-demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --durations=30 tests

benchmark: $(STAMP)
	$(VENV)/bin/python tools/benchmark.py

clean:
	rm -rf $(VENV) build *.egg-info
