# The two commands a new machine needs (run as root on Debian 12):
#   make demo   set up, boot a lab of real VMs, run ebbd on them under memory pressure
#   make test   set up and run every test (unit and end-to-end)
.PHONY: demo test unit lint bootstrap

demo:
	./dev/demo.sh

test:
	./dev/test.sh

unit:
	.venv/bin/python -m pytest -q tests/unit

lint:
	.venv/bin/ruff check . && ./dev/typecheck.sh

bootstrap:
	./dev/bootstrap.sh
