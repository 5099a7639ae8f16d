"""The CLI root: help text that states each default once, -q/-v that set the log level."""

from __future__ import annotations

import argparse
import re

import pytest

from aekit.cli import build_parser, main


def subparsers(parser: argparse.ArgumentParser, prefix: str = "aekit"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from subparsers(sub, f"{prefix} {name}")


def test_help_states_each_default_once():
    bad = []
    for name, p in subparsers(build_parser()):
        text = " ".join(p.format_help().split())
        if "(default: None)" in text or re.search(r"\(default[^)]*\) \(default", text):
            bad.append(name)
    assert not bad, f"doubled or empty defaults in --help of: {bad}"


def test_help_still_shows_real_defaults():
    (name, p), = [(n, p) for n, p in subparsers(build_parser()) if n == "aekit train"]
    assert "latent ratio 1/N (default: 4)" in " ".join(p.format_help().split())  # --ratio


@pytest.mark.parametrize("flags, shown", [((), True), (("-q",), False)])
def test_quiet_hides_progress_lines(tmp_path, capsys, flags, shown):
    assert main([*flags, "data", "samples", str(tmp_path / "photos")]) == 0
    cap = capsys.readouterr()
    assert ("photos in" in cap.err) is shown and cap.out == ""


def test_verbose_names_the_logger(tmp_path, capsys):
    assert main(["-v", "data", "samples", str(tmp_path / "photos")]) == 0
    assert "aekit.datasets: " in capsys.readouterr().err


def test_global_flags_survive_a_subcommand_option_of_the_same_name():
    args = build_parser().parse_args(["-q", "-q", "bench", "models/x", "--quiet"])
    assert args.log_less == 2 and args.quiet is True  # aekit's -q and bench's --quiet are separate


@pytest.mark.parametrize("argv, usage", [
    (["compress", "x", "-m", "photos-r9", "-o", "out", "--bogus"], "usage: aekit compress"),
    (["data", "photos", "out", "--bogus"], "usage: aekit data photos"),
    (["--bogus"], "usage: aekit [-h]"),
])
def test_unknown_option_names_the_subcommand_usage(argv, usage, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(usage) and err.rstrip().endswith("unrecognized arguments: --bogus")
    assert err.count("error:") == 1


def test_an_output_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, capsys):
    """An OSError (a file in the way, a read-only or full disk, no permission) is the job's error, not exit 1's
    "found something", and not a traceback."""
    (tmp_path / "a-file").write_text("x")
    assert main(["data", "samples", str(tmp_path / "a-file" / "photos")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aekit data: error: ") and "a-file" in err[0], err


def test_switches_do_not_show_a_misleading_default():
    (name, p), = [(n, p) for n, p in subparsers(build_parser()) if n == "aekit compress"]
    text = " ".join(p.format_help().split())
    assert "--no-post-filter" in text and "(default: True)" not in text and "(default: False)" not in text
