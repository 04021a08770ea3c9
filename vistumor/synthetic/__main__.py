"""``python -m vistumor.synthetic``: see :func:`vistumor.synthetic.cli.main`."""

from vistumor.synthetic.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
