"""The READMEs' commands name things that exist, and their links resolve.

Every command of a fenced ```bash / ```sh block of README.md and benchmarks/README.md (and every
`$ ` line of any other block, a console transcript) is checked without running anything expensive:
`make TARGET` against the Makefile's targets; `python genre_utils.py COMMAND --flag ...` and
`python benchmarks/X.py --flag ...` against their `--help` (the subcommand exists, every `--flag` is
listed); scripts, folders and requirement files they name against the working tree. Commands that
need the network or a GPU (`make fma`, `pip install`, `benchmarks/gpu_check.sh`, `jupyter lab`) are
only checked for the target, script or folder they name. Environment prefixes (`GENRE_PROFILE=seed`),
`#` comments and `\\` continuations are handled as a shell would. A command this file does not
recognise fails, so that a new kind of command gets a check rather than a pass.

The README's Glossary is checked against the notebooks. The convention: a glossary row is
`| term | meaning | [NN](notebooks/NN_name.ipynb) |`, and the notebook it names defines the term where
it first uses it in **bold** in a markdown cell: some bold span there (`**...**`) contains the term,
compared in lower case with quotes, backticks and hyphens read as spaces. The README's length limit
counts the page a newcomer reads, without its Glossary and References (looked up, not read through).
"""

import contextlib
import fnmatch
import functools
import io
import json
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMAND_DOCS = ("README.md", "benchmarks/README.md")  # whose commands are checked
LINK_DOCS = ("README.md", "benchmarks/README.md", "TROUBLESHOOTING.md")  # whose relative links are checked
README_MAX_BYTES = 15_000  # a front page a newcomer reads in five minutes
SHELL_LANGUAGES = {"bash", "sh", "shell", "zsh"}  # blocks whose every line is a command
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")
OPERATORS = {"&&", "||", ";", "|"}
TRAILING_COMMENT = re.compile(r"\s+#.*$")  # for test ids only


# ── Reading the commands ──


def shell_commands(markdown: str) -> list[str]:
    """The commands of a markdown text's fenced blocks: every line of a bash/sh block, the `$ ` lines
    of any other block, lines ending in `\\` joined with the next; comment-only lines dropped."""
    commands = []
    fence = None  # the opening fence while inside a block
    language = ""
    pending = None  # a command continued on the next line
    for line in markdown.splitlines():
        match = FENCE.match(line)
        if match and (fence is None or match.group(1).startswith(fence) and not match.group(2)):
            fence, language = (match.group(1), match.group(2).lower()) if fence is None else (None, "")
            pending = None
            continue
        if fence is None:
            continue
        text = line.strip()
        if pending is not None:
            text = f"{pending} {text}"
        elif text.startswith("$ "):
            text = text[2:].strip()
        elif language not in SHELL_LANGUAGES:
            continue  # output of a transcript
        if text.endswith("\\"):
            pending = text[:-1].rstrip()
            continue
        pending = None
        if text and not text.startswith("#"):
            commands.append(text)
    return commands


def simple_commands(command: str) -> list[list[str]]:
    """The words of each simple command of a command line, comments and environment prefixes removed."""
    words = shlex.split(command, comments=True)
    found, current = [], []
    for word in [*words, ";"]:
        if word in OPERATORS:
            while current and ENV_ASSIGNMENT.fullmatch(current[0]):
                current.pop(0)
            if current:
                found.append(current)
            current = []
        else:
            current.append(word)
    return found


def _doc_commands() -> list:
    """One pytest param per command of COMMAND_DOCS, its id the document and the command without comment."""
    return [
        pytest.param(doc, command, id=f"{doc}: {TRAILING_COMMENT.sub('', command)}")
        for doc in COMMAND_DOCS
        for command in dict.fromkeys(shell_commands((ROOT / doc).read_text()))
    ]


# ── What a command names ──


@functools.cache
def make_targets() -> frozenset[str]:
    """The targets (and pattern rules, `%` a wildcard) the Makefile defines."""
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        if match := re.match(r"([^\s:=#][^:=]*?)\s*::?(?!=)", line):
            targets.update(match.group(1).split())
    return frozenset(targets)


@functools.cache
def help_text(*argv: str) -> str:
    """`python ARGV --help` in the project root: its output; fails naming the command if it fails. Run in
    this process (`runpy`, sys.argv and sys.path restored after), as a script would be: no interpreter
    start-up and no second import of numpy and pandas per command."""
    script, *arguments = argv
    out, saved_argv, saved_path = io.StringIO(), sys.argv, list(sys.path)
    sys.argv = [script, *arguments, "--help"]
    sys.path.insert(0, str((ROOT / script).parent))  # as `python script` puts its folder first
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()) as err:
            runpy.run_path(str(ROOT / script), run_name="__main__")
        status = 0
    except SystemExit as exc:
        status = exc.code or 0
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    assert status == 0, f"`{' '.join(argv)} --help` failed ({status}): {err.getvalue()[-1500:]}"
    return out.getvalue()


def _flags(words: list[str]) -> list[str]:
    return [word.split("=", 1)[0] for word in words if word.startswith("--") and word != "--"]


def _assert_flags_listed(flags: list[str], help: str, where: str) -> None:
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help), f"{where} has no option {flag}"


def _check_make(args: list[str]) -> None:
    for target in [arg for arg in args if not arg.startswith("-") and "=" not in arg]:
        patterns = [t.replace("%", "*") for t in make_targets()]
        assert any(fnmatch.fnmatchcase(target, p) for p in patterns), f"the Makefile has no target {target}"


def _check_genre_utils(args: list[str]) -> None:
    """Options before the subcommand against the top-level help, the subcommand's after it."""
    top = help_text("genre_utils.py")
    takes_value = set(re.findall(r"\[(--[\w-]+) [A-Z][A-Z0-9_]*\]", top))
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 1 + (args[i] in takes_value)
    _assert_flags_listed(_flags(args[:i]), top, "genre_utils.py")
    assert i < len(args), "genre_utils.py without a command"
    command = args[i]
    _assert_flags_listed(_flags(args[i + 1 :]), help_text("genre_utils.py", command), f"genre_utils.py {command}")


def _check_python(args: list[str]) -> None:
    if args[:2] in (["-m", "pip"], ["-m", "uv"]):
        return _check_pip(args[2:])
    if args[:2] == ["-m", "pytest"]:
        return _check_paths(args[2:])
    assert args and not args[0].startswith("-"), f"python {' '.join(args)}: not a script this test knows"
    script, rest = args[0], args[1:]
    assert (ROOT / script).is_file(), f"{script}: no such file"
    if script == "genre_utils.py":
        _check_genre_utils(rest)
    else:
        _assert_flags_listed(_flags(rest), help_text(script), script)


def _check_pip(args: list[str]) -> None:
    """pip needs the network: only the requirement files it names must exist."""
    for option, value in zip(args, args[1:]):
        if option in ("-r", "--requirement"):
            assert (ROOT / value).is_file(), f"{value}: no such file"


def _check_paths(args: list[str]) -> None:
    for arg in args:
        if not arg.startswith("-") and "/" in arg:
            assert (ROOT / arg.split("::")[0]).exists(), f"{arg}: no such file or folder"


def check_command(command: str) -> None:
    """Raise AssertionError naming what a README command names that does not exist."""
    for words in simple_commands(command):
        program, args = Path(words[0]).name, words[1:]
        if program == "make":
            _check_make(args)
        elif re.fullmatch(r"python(3(\.\d+)?)?", program):
            _check_python(args)
        elif program in ("pip", "pip3", "uv"):
            _check_pip(args[1:])
        elif program in ("bash", "sh") or program.endswith(".sh"):
            script = args[0] if program in ("bash", "sh") else words[0]
            assert (ROOT / script).is_file(), f"{script}: no such file"
        elif program == "jupyter":
            _check_paths(args)
        elif program == "pytest":
            _check_paths(args)
        else:
            raise AssertionError(f"`{' '.join(words)}`: a command tests/test_readme.py does not know; teach it one")


# ── Links ──


def _outside_fences(markdown: str) -> list[str]:
    """The lines of a markdown text outside its fenced blocks."""
    lines, fence = [], None
    for line in markdown.splitlines():
        if match := FENCE.match(line):
            fence = match.group(1) if fence is None else None
        elif fence is None:
            lines.append(line)
    return lines


def _prose(markdown: str) -> str:
    """The text outside fenced blocks and inline code."""
    return "\n".join(re.sub(r"`[^`]*`", "", line) for line in _outside_fences(markdown))


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    """The anchors GitHub gives the headings of a markdown file (duplicates numbered -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for line in _outside_fences(path.read_text()):
        if match := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line):
            slug = re.sub(r"[^\w\- ]", "", match.group(1).replace("`", "").lower()).replace(" ", "-")
            found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return frozenset(found)


def relative_links(markdown: str) -> list[str]:
    """The targets of a markdown text's links and images that point into the repository."""
    targets = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", _prose(markdown))
    return [target for target in targets if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)]


def check_link(doc: str, target: str) -> None:
    path_part, _, anchor = target.partition("#")
    path = (ROOT / doc).parent / path_part if path_part else ROOT / doc
    assert path.exists(), f"{doc}: {target}: no such file"
    if anchor:
        assert path.suffix == ".md", f"{doc}: {target}: an anchor into a file that is not markdown"
        assert anchor in anchors(path.resolve()), f"{doc}: {target}: {path_part or doc} has no heading #{anchor}"


# ── The tests ──


@pytest.mark.parametrize(("doc", "command"), _doc_commands())
def test_command_names_what_exists(doc, command):
    check_command(command)


@pytest.mark.parametrize(
    ("doc", "target"),
    [
        pytest.param(doc, target, id=f"{doc}: {target}")
        for doc in LINK_DOCS
        for target in dict.fromkeys(relative_links((ROOT / doc).read_text()))
    ],
)
def test_link_resolves(doc, target):
    check_link(doc, target)


def test_readme_is_short():
    text = (ROOT / "README.md").read_text()
    size = len(text.split("\n## Glossary", 1)[0].encode())
    assert size < README_MAX_BYTES, (
        f"README.md is {size} bytes before its Glossary: move detail to benchmarks/README.md"
    )


# ── The glossary: each term defined in bold in the notebook that teaches it ──

GLOSSARY_ROW = re.compile(r"^\|\s*([^|]+?)\s*\|[^|]*\|\s*\[[^\]]*\]\((notebooks/[^)]+\.ipynb)\)\s*\|\s*$")
BOLD = re.compile(r"\*\*(.+?)\*\*", re.DOTALL)


def normalise(text: str) -> str:
    """Lower case, quotes, backticks and hyphens as spaces, runs of white space as one."""
    return " ".join(re.sub(r"[\"'`\u201c\u201d\u2018\u2019-]", " ", text.lower()).split())


def glossary(markdown: str) -> list[tuple[str, str]]:
    """(term, notebook path) of each row of the Glossary section's table."""
    section = markdown.split("\n## Glossary", 1)[1].split("\n## ", 1)[0] if "\n## Glossary" in markdown else ""
    return [match.groups() for line in section.splitlines() if (match := GLOSSARY_ROW.match(line))]


def bold_spans(notebook: Path) -> list[str]:
    """The normalised bold spans of a notebook's markdown cells."""
    cells = json.loads(notebook.read_text())["cells"]
    markdown = "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown")
    return [normalise(span) for span in BOLD.findall(markdown)]


def defines(notebook: Path, term: str) -> bool:
    return any(normalise(term) in span for span in bold_spans(notebook))


GLOSSARY = glossary((ROOT / "README.md").read_text())


def test_glossary_is_long_enough():
    assert len(GLOSSARY) >= 20, f"README.md: the Glossary has {len(GLOSSARY)} terms, 20 or more expected"
    assert len({term.lower() for term, _ in GLOSSARY}) == len(GLOSSARY), "a term is listed twice"


@pytest.mark.parametrize(("term", "notebook"), GLOSSARY, ids=[term for term, _ in GLOSSARY])
def test_glossary_term_is_defined_in_its_notebook(term, notebook):
    assert (ROOT / notebook).is_file(), f"README.md Glossary: {term}: {notebook} does not exist"
    assert defines(ROOT / notebook, term), f"{notebook}: the glossary term {term!r} is in bold in no markdown cell"


def test_an_undefined_term_fails(tmp_path):
    notebook = tmp_path / "nb.ipynb"
    cells = [
        {"cell_type": "markdown", "source": ['A **"same" padding** keeps sizes; *dropout* is italic.\n']},
        {"cell_type": "code", "source": ["# **softmax** in code\n"]},
    ]
    notebook.write_text(json.dumps({"cells": cells}))
    assert defines(notebook, "same padding") and not defines(notebook, "dropout") and not defines(notebook, "softmax")
    row = "| ReLU | max(0, x). | [03](notebooks/03_model.ipynb) |"
    assert glossary(f"# x\n\n## Glossary\n\n{row}\n\n## References\n\n{row}\n") == [
        ("ReLU", "notebooks/03_model.ipynb")
    ]


def test_every_doc_has_commands():
    for doc in COMMAND_DOCS:
        assert shell_commands((ROOT / doc).read_text()), f"{doc}: no command found: is the block syntax right?"


def test_commands_are_read_as_a_shell_would():
    markdown = "\n".join(
        [
            "text `make nope` outside blocks",
            "```bash",
            "make demo    # a comment",
            "# a comment line",
            "GENRE_PROFILE=seed make demo",
            ".venv/bin/python genre_utils.py predict a.mp3 \\",
            "    --top 5",
            "```",
            "```console",
            "$ .venv/bin/python genre_utils.py predict x.mp3",
            "x.mp3: 1 window of 10 s (10.0 s of audio)",
            "```",
            "```",
            "data/fma/fma_small/000/000002.mp3",
            "```",
        ]
    )
    assert shell_commands(markdown) == [
        "make demo    # a comment",
        "GENRE_PROFILE=seed make demo",
        ".venv/bin/python genre_utils.py predict a.mp3 --top 5",
        ".venv/bin/python genre_utils.py predict x.mp3",
    ]
    assert simple_commands("GENRE_PROFILE=seed A=1 make demo  # why") == [["make", "demo"]]
    assert simple_commands("make data && make test") == [["make", "data"], ["make", "test"]]


@pytest.mark.parametrize(
    "command",
    [
        ".venv/bin/python genre_utils.py predict SONG.mp3 --no-such-flag",
        ".venv/bin/python genre_utils.py --no-such-flag predict SONG.mp3",
        ".venv/bin/python genre_utils.py no-such-command",
        ".venv/bin/python benchmarks/real_music.py --no-such-flag",
        ".venv/bin/python benchmarks/no_such_benchmark.py",
        "make no-such-target",
        "bash benchmarks/no_such_check.sh",
        "frobnicate --all",
    ],
)
def test_a_wrong_command_fails(command):
    with pytest.raises(AssertionError):
        check_command(command)


@pytest.mark.parametrize(
    "command",
    [
        'pip install "tensorflow[and-cuda]==2.21.0"',
        ".venv/bin/python -m pip install -r requirements.txt",
        "bash benchmarks/gpu_check.sh",
        "GENRE_QUICK=1 .venv/bin/python -m pytest --nbval notebooks/",
        "make fma",
    ],
)
def test_network_and_gpu_commands_are_checked_without_running(command):
    check_command(command)


def test_a_broken_link_fails():
    assert relative_links("[a](README.md#quick-start) [b](https://example.org) ![c](figures/x.png)") == [
        "README.md#quick-start",
        "figures/x.png",
    ]
    check_link("README.md", "benchmarks/README.md#real-recordings")
    for target in ("no-such-file.md", "README.md#no-such-heading", "#no-such-heading"):
        with pytest.raises(AssertionError):
            check_link("README.md", target)
