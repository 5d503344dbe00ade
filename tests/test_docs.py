"""The documentation: every code block of README.md and docs/ runs, and the hooks reference is complete.

How a block is run (the convention is also stated in docs/index.md, "The code on these pages"):

* ``python`` blocks are executed; the python blocks of one page share one namespace, top to bottom.
* ``console`` blocks are shell commands, one per line (``# ...`` ends a line as a comment, a
  trailing ``\\`` continues it); each must exit with status 0. ``fewcore ...`` commands run in
  this process (fast); others run in bash with the project's virtual environment first on PATH.
  A page that runs ``pip install`` gets a virtual environment of its own, layered on the
  project's, so a tutorial never installs into the project's; its ``fewcore`` commands see what
  it installed (its site directory is added for the command, and the registry reloaded).
* Each page runs in a fresh working directory holding ``configs/`` (the repository's).
* An HTML comment on the line before a block (invisible on the rendered page) changes this:
  ``<!-- docs-test: skip REASON -->`` does not run the block (a reason is required);
  ``<!-- docs-test: file PATH -->`` writes the block's text to PATH (relative to the working
  directory) instead of running it, for the files a tutorial has the reader create (the line of
  text before it names the file as `` `PATH` ``, so the reader sees it too);
  ``<!-- docs-test: setup COMMAND -->`` runs the console command COMMAND before the block, for a
  state the page assumes the reader has (e.g. a trained run).
* Blocks in other languages (``toml``, ``text``, ...) are shown, not run; blocks without a
  language and ``bash``, ``sh``, ``shell`` and ``pycon`` blocks are refused: write commands as
  ``console`` and code as ``python`` (or plain text as ``text``).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
import re
import shlex
import site
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

import fewcore
from fewcore import hookspecs
from fewcore.cli import main
from tests.conftest import REPO_ROOT

DOC_PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
RUN_LANGUAGES = ("python", "console")
REFUSED_LANGUAGES = ("bash", "sh", "shell", "pycon")
_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<language>[\w+-]*)\s*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<kind>\w+)\s*(?P<argument>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page and the directive before it, if any."""

    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    directive: str | None = None
    argument: str = ""
    text_before: str = ""  # the last line of prose before the block (and its directive)

    @property
    def where(self) -> str:
        page = self.page.relative_to(REPO_ROOT) if self.page.is_relative_to(REPO_ROOT) else self.page
        return f"{page}:{self.line}"


def read_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, in order."""
    blocks, lines = [], page.read_text().splitlines()
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        indent, start = fence["indent"], index
        body = []
        index += 1
        while index < len(lines) and lines[index].strip() != "```":
            line = lines[index]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            index += 1
        before = [line for line in lines[:start] if line.strip()]
        directive = _DIRECTIVE.match(before[-1]) if before else None
        prose = before[:-1] if directive else before
        blocks.append(
            Block(
                page,
                start + 1,
                fence["language"],
                "\n".join(body) + "\n",
                directive["kind"] if directive else None,
                directive["argument"] if directive else "",
                prose[-1] if prose else "",
            )
        )
        index += 1
    return blocks


def commands(code: str) -> list[str]:
    """The command lines of a console block (continuations joined, comment-only lines dropped)."""
    joined = code.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


class PageRunner:
    """Runs the blocks of one page in its working directory."""

    def __init__(self, workdir: Path, isolated: bool) -> None:
        self.workdir = workdir
        self.namespace: dict[str, Any] = {"__name__": "__docs__"}
        bin_dirs = [str(Path(sys.executable).parent)]
        self.site_packages: Path | None = None
        if isolated:
            bin_dirs.insert(0, str(self._layered_venv(workdir / ".venv-docs")))
            self.site_packages = next((workdir / ".venv-docs").glob("lib/python*/site-packages"))
        self.env = {**os.environ, "PATH": os.pathsep.join([*bin_dirs, os.environ.get("PATH", "")]), "MPLBACKEND": "Agg"}
        self.env["OMP_NUM_THREADS"] = "1"  # tiny models on a shared machine: one thread (see conftest's one_thread)

    @staticmethod
    def _layered_venv(path: Path) -> Path:
        """A virtual environment that sees the project's packages but installs into itself."""
        venv.create(path, with_pip=False, symlinks=True)
        site_packages = next(path.glob("lib/python*/site-packages"))
        project_site = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
        # `site.addsitedir` also processes the project's .pth files (its editable installs).
        (site_packages / "_project_venv.pth").write_text(f"import site; site.addsitedir({project_site!r})\n")
        # The project's console scripts start the project's interpreter, which would install
        # there and not see what was installed here: this environment gets its own.
        for script, module in (("pip", "pip"), ("fewcore", "fewcore.cli")):
            file = path / "bin" / script
            file.write_text(f"#!{path / 'bin' / 'python'}\nimport runpy\nrunpy.run_module({module!r}, run_name='__main__')\n")
            file.chmod(0o755)
        return path / "bin"

    @contextlib.contextmanager
    def page_packages(self) -> Iterator[None]:
        """While open: what the page installed is importable and registered (then forgotten)."""
        if self.site_packages is None:
            yield
            return
        saved_path, saved_meta_path = list(sys.path), list(sys.meta_path)
        site.addsitedir(str(self.site_packages))  # runs its .pth files: the editable installs
        importlib.invalidate_caches()
        fewcore.registry(reload=True)
        try:
            yield
        finally:
            sys.path[:], sys.meta_path[:] = saved_path, saved_meta_path
            importlib.invalidate_caches()
            fewcore.registry(reload=True)

    def run(self, block: Block) -> None:
        if block.directive == "setup":
            self.run_console(block, block.argument)
        if block.language == "python":
            with self.page_packages():
                try:
                    exec(compile(block.code, block.where, "exec"), self.namespace)
                except Exception as exc:
                    raise AssertionError(f"{block.where}: {type(exc).__name__}: {exc}") from exc
        elif block.language == "console":
            for line in commands(block.code):
                self.run_console(block, line)

    def run_console(self, block: Block, line: str) -> None:
        argv = shlex.split(line, comments=True)
        if argv[0] == "fewcore" and not any(c in line for c in "|;&<>"):
            out = io.StringIO()
            with self.page_packages(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                status = main(argv[1:])
            assert status == 0, f"{block.where}: `{line}` exited with {status}:\n{out.getvalue()[-3000:]}"
            return
        result = subprocess.run(
            ["bash", "-c", line], cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=300
        )
        output = (result.stdout + result.stderr)[-3000:]
        assert result.returncode == 0, f"{block.where}: `{line}` exited with {result.returncode}:\n{output}"


def _page_id(page: Path) -> str:
    return str(page.relative_to(REPO_ROOT))


@pytest.mark.parametrize("page", DOC_PAGES, ids=_page_id)
def test_every_block_is_run_or_says_why_not(page: Path) -> None:
    for block in read_blocks(page):
        assert block.language and block.language not in REFUSED_LANGUAGES, (
            f"{block.where}: a block in {block.language or 'no language'!r}; write commands as 'console' and code as "
            "'python' so that they run (or plain text as 'text')"
        )
        if block.directive is not None:
            assert block.directive in ("skip", "file", "setup"), f"{block.where}: unknown directive {block.directive!r}"
            needed = "a reason" if block.directive == "skip" else "an argument"
            assert block.argument, f"{block.where}: 'docs-test: {block.directive}' needs {needed}"
        if block.directive == "file":
            assert f"`{block.argument}`" in block.text_before, (
                f"{block.where}: the line before a file block must name the file for the reader, as `{block.argument}`"
            )


def runnable_blocks(page: Path) -> list[Block]:
    """The blocks of ``page`` that the test runs or writes, in order."""
    return [
        b for b in read_blocks(page) if b.directive != "skip" and (b.language in RUN_LANGUAGES or b.directive == "file")
    ]


def run_page(page: Path, workdir: Path) -> None:
    """Run the code of ``page`` in ``workdir`` (the current directory), as the module docstring says."""
    runnable = runnable_blocks(page)
    (workdir / "configs").symlink_to(REPO_ROOT / "configs")
    isolated = any("pip install" in line for b in runnable if b.language == "console" for line in commands(b.code))
    runner = PageRunner(workdir, isolated)
    registered = sorted((c.kind, c.name) for c in fewcore.registry().components())
    for block in runnable:
        if block.directive == "file":
            target = workdir / block.argument
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code)
        else:
            runner.run(block)
    assert sorted((c.kind, c.name) for c in fewcore.registry().components()) == registered, (
        "a page must leave the registry as it found it"
    )


@pytest.mark.parametrize("page", [p for p in DOC_PAGES if runnable_blocks(p)], ids=_page_id)
def test_page_code_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    run_page(page, tmp_path)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("```python\nassert fewcore.__name__ == 'nope'\n```", r"page.md:6: AssertionError"),
        ("```console\nfewcore eval runs/none\n```", r"page.md:6: `fewcore eval runs/none` exited with 2"),
        ("```console\nls no-such-file\n```", r"page.md:6: `ls no-such-file` exited with 2"),
        ("<!-- docs-test: setup false -->\n```python\npass\n```", r"page.md:7: `false` exited with 1"),
    ],
)
def test_a_failing_block_fails_the_page_and_names_its_line(
    block: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n```python\nimport fewcore\n```\n" + block + "\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    with pytest.raises(AssertionError, match=message):
        run_page(page, workdir)


def test_every_hookspec_has_a_heading_with_its_signature() -> None:
    text = (REPO_ROOT / "docs" / "plugins.md").read_text()
    hooks = [name for name, obj in vars(hookspecs).items() if name.startswith("fewcore_") and inspect.isfunction(obj)]
    assert hooks, "no hookspecs found"
    for name in hooks:
        parameters = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        heading = f"### `{name}({parameters})`"
        assert heading in text, f"docs/plugins.md lacks the heading {heading!r}"
