"""The README as a new user reads it: its snippet runs as a script, every command it shows exists
and takes the options it shows, and every option it names is one the code has.

The README shows only commands that a test or `.ci/run` runs: the two marked `<!-- ci:... -->`
run in CI, the Python snippet marked `<!-- test:snippet -->` runs here, and every other command
is checked here to exist (`--help`), with its options.
"""
from __future__ import annotations

import functools
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

README = ROOT / "README.md"
SNIPPET_MARKER = "<!-- test:snippet -->"
SNIPPET_ROOT = "/data/gops"           # the GOP root the snippet names, replaced by a real one
GUARD = 'if __name__ == "__main__":'


def blocks(text: str) -> list[tuple[str, str, str]]:
    """Every fenced block: (language, the line before it, its text)."""
    found, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            found.append((fence.group(1), before.strip(), "\n".join(lines[i + 1:end]) + "\n"))
            i = end
        i += 1
    return found


@functools.cache
def readme() -> str:
    return README.read_text()


def snippet() -> str:
    marked = [text for language, before, text in blocks(readme())
              if before == SNIPPET_MARKER and language == "python"]
    assert len(marked) == 1, f"README needs one ```python block right after {SNIPPET_MARKER}"
    return marked[0]


def commands() -> list[str]:
    """The command lines of the README's bash blocks (continuations joined, comments dropped)."""
    found = []
    for language, _, text in blocks(readme()):
        if language != "bash":
            continue
        for line in text.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                found.extend(part.strip() for part in line.split("&&"))
    return found


# -- the snippet ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gop_root(tmp_path_factory) -> Path:
    """Two clips of two cameras, 16 frames in GOPs of 8 (under a second to make)."""
    from dali_gop.synthetic import make_dataset
    from preprocess.runner import preprocess
    root = tmp_path_factory.mktemp("readme")
    make_dataset(root / "videos", clips=2, cameras=2, frames=16, gop=8, workers=1)
    summary = preprocess(root / "videos", root / "gops", workers=1, progress=False)
    assert summary.ok, summary.format()
    return root / "gops"


# the snippet as written, on the cpu backend whatever the machine (2 workers: CI has 2 cores); the
# loader it built is kept so that the end of the script can say what it delivered
PRELUDE = """\
import dali_gop
_built = []
def _cpu_loader(*args, _make=dali_gop.make_loader, **options):
    _built.append(_make(*args, **{"backend": "cpu", "num_workers": 2, **options}))
    return _built[-1]
dali_gop.make_loader = _cpu_loader
"""
EPILOGUE = """
if __name__ == "__main__":
    print("delivered", len(_built), len(loader), loader.epoch, tuple(frames.shape))
"""


def run_script(path: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(path)], cwd=path.parent, capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_the_snippet_runs_as_a_script_and_loads_an_epoch(gop_root, tmp_path):
    code = snippet()
    assert SNIPPET_ROOT in code and GUARD in code
    script = tmp_path / "train.py"
    script.write_text(PRELUDE + code.replace(SNIPPET_ROOT, str(gop_root)) + EPILOGUE)
    done = run_script(script)
    assert done.returncode == 0, done.stderr
    loaders, batches, epoch, shape = re.fullmatch(r"delivered (\d+) (\d+) (\d+) (\(.*\))\n",
                                                  done.stdout).groups()
    # one loader, a whole epoch of its batches taken; frames: (B, cameras, T, H, W, 3)
    assert (int(loaders), int(epoch)) == (1, 1) and int(batches) > 0, done.stdout
    b, cameras, t, h, w, c = eval(shape)
    assert 0 < b <= 4 and (cameras, t, h, w, c) == (2, 1, 96, 160, 3), shape
    # nothing the user cannot act on: no DALI reader_name warning, no warning at all
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr, done.stderr


def without_guard(code: str) -> str:
    """The snippet with its main guard removed and the block under it dedented."""
    lines, out, inside = code.splitlines(), [], False
    for line in lines:
        if line.startswith(GUARD):
            inside = True
            continue
        out.append(line[4:] if inside and line.startswith("    ") else line)
    return "\n".join(out) + "\n"


def test_the_snippet_without_its_main_guard_still_runs(gop_root, tmp_path):
    """The guard is advice, not a requirement of the README's own lines: the loader keeps DALI's
    spawned workers from importing a script that defines nothing they need."""
    code = without_guard(snippet())
    assert GUARD not in code
    script = tmp_path / "train.py"
    script.write_text(PRELUDE + code.replace(SNIPPET_ROOT, str(gop_root))
                      + EPILOGUE.replace(GUARD, "if True:"))
    done = run_script(script)
    assert done.returncode == 0 and done.stdout.startswith("delivered 1 "), done.stderr
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr, done.stderr


def test_without_its_main_guard_a_script_that_workers_import_gets_one_line(gop_root, tmp_path):
    """Workers import the script only when the loader uses something it defines (here a pattern
    class); then the loader code must not run in them. The user is told so once, in one line, and
    the script ends with a non-zero status: not a traceback per worker."""
    code = without_guard(snippet())
    assert GUARD not in code
    code = code.replace("from dali_gop import make_loader",
                        "from dali_gop import StreamPattern, make_loader\n\n\n"
                        "class MyPattern(StreamPattern):\n    pass\n")
    code = code.replace('"stream"', "MyPattern()")
    assert "MyPattern()" in code
    script = tmp_path / "train.py"
    script.write_text(PRELUDE + code.replace(SNIPPET_ROOT, str(gop_root)))
    done = run_script(script)
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if GUARD in line]
    assert len(said) == 1 and "make_loader ran while a DALI worker process imported your " \
        "script" in said[0], done.stderr
    assert done.stderr.count("Traceback") <= 1, done.stderr   # the script's own, at most
    assert "Workers initialization failed" not in done.stderr, done.stderr


# -- the commands -----------------------------------------------------------------------------------
def modules() -> list[str]:
    """Every module the README runs with `python -m` or `torchrun ... -m`, in code or prose."""
    named = re.findall(r"(?:python3? -m|torchrun\b[^`\n]*? -m) ([\w.]+)", readme())
    return sorted(set(named))


def help_text(module: str) -> str:
    done = subprocess.run([sys.executable, "-m", *module.split(), "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, f"python -m {module} --help: {done.stderr[-2000:]}"
    return done.stdout


@functools.cache
def helps() -> dict[str, str]:
    """--help of every command the README shows, and of the other tools its lines call."""
    return {module: help_text(module) for module in
            [*modules(), "torch.distributed.run", "pip install"]}


def test_the_readme_names_the_commands_it_should():
    assert {"preprocess", "preprocess.demo", "pipelines.train_example", "pipelines.throughput",
            "pipelines.throughput.chart"} <= set(modules())


@pytest.mark.parametrize("module", modules())
def test_every_module_the_readme_runs_exists(module):
    assert "usage:" in helps()[module]


def command_module(words: list[str]) -> str | None:
    if words[:2] == ["pip", "install"]:
        return "pip install"
    if words[0] == "torchrun" or "-m" in words:
        return words[words.index("-m") + 1] if "-m" in words else None
    return None


def test_every_option_of_a_readme_command_exists():
    """`--flag` in a bash block: the command's --help lists it (torchrun's own flags, before
    `-m`, in torchrun's)."""
    missing = []
    for line in commands():
        words = shlex.split(line)
        module = command_module(words)
        if module is None:
            continue
        cut = words.index("-m") if "-m" in words else len(words)
        for i, word in enumerate(words):
            if not word.startswith("--"):
                continue
            owner = "torch.distributed.run" if words[0] == "torchrun" and i < cut else module
            if word.split("=")[0] not in helps()[owner]:
                missing.append(f"{word} ({owner}): {line}")
    assert not missing, "\n".join(missing)


def test_every_option_the_prose_names_exists():
    """`--flag` anywhere in the README: some command it shows has it."""
    every = "\n".join(helps().values())
    named = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", readme()))
    assert named and not sorted(flag for flag in named if flag not in every)


def test_every_extra_a_pip_command_names_exists():
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^(\w+) = \[", section, re.M))
    named = {extra.strip() for group in re.findall(r"-e '\.\[([\w,]+)\]'", readme())
             for extra in group.split(",")}
    assert {"cpu", "cu12", "cu13"} <= named and named <= extras, (named, extras)


def test_the_cpu_install_uses_pytorchs_cpu_index():
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in commands()


# -- the options ------------------------------------------------------------------------------------
def api_parameters() -> set[str]:
    import dali_gop
    names = set()
    for function in (dali_gop.make_loader, dali_gop.gop_video, dali_gop.StreamPattern,
                     dali_gop.RandomPattern, dali_gop.SequencePattern):
        names |= set(inspect.signature(function).parameters)
    return names


def code_spans(text: str) -> list[str]:
    """Inline code and the python blocks."""
    spans = [code for language, _, code in blocks(text) if language == "python"]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    # a span may go on over a line break
    return spans + [re.sub(r"\s*\n\s*", " ", span) for span in re.findall(r"`([^`]+)`", prose)]


def test_every_keyword_the_readme_names_is_a_parameter():
    """`name=` and `name` (snake_case) in code: a parameter of make_loader, gop_video or a
    pattern (or a field of manifest.json), so the README cannot name an option that is gone."""
    known = api_parameters() | {"video_dirs"}
    keywords, names = set(), set()
    for span in code_spans(readme()):
        keywords |= set(re.findall(r"(?<![=\w])([a-z_]\w*)=(?!=)", span))
        if re.fullmatch(r"[a-z]+(?:_[a-z]+)+", span):
            names.add(span)
    assert {"resize", "cameras", "index_file", "skip_incomplete_clips", "stream_lead",
            "decode_ahead", "stream_decoding"} <= keywords | names
    assert not sorted((keywords | names) - known)
