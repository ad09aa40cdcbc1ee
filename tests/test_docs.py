"""The documentation's links resolve, and the README keeps the shape CI relies on.

Checked files: README.md, benchmarks/README.md and every docs/*.md. Every relative Markdown link `[text](path)`,
`[text](path#anchor)` and `[text](#anchor)` (images too) must point at a file or folder that exists, relative to the
linking file, and an anchor must name a heading of the target as GitHub computes heading slugs. Links to other
schemes (http, https, mailto, ...) and links inside fenced code blocks are skipped. Pure text checks: no package
import, no network.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
CI_MARKER = "# --- the README's test command, verbatim ---"
MAX_README_LINES = 300
# The old sandbox helper is gone; no page may send readers to it.
REMOVED_SANDBOX_NAMES = ("run_untrusted", "SandboxResult", "_sandbox_harness", "grading/sandbox.py")

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) or ![alt](target), with an optional <target> and an optional "title".
_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_HTML_ANCHOR = re.compile(r"<a\s[^>]*?\b(?:name|id)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def doc_files() -> list[Path]:
    return [README, ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _closes(fence: str, match, line: str) -> bool:
    """Whether `line` (matched as a fence) closes the block opened by `fence`: same character, at least as long."""
    if not match:
        return False
    marker = match.group(1)
    return marker[0] == fence[0] and len(marker) >= len(fence) and not line[match.end() :].strip()


def _outside_fences(text: str):
    """(line number, line) of every line that is not inside a fenced code block (nor a fence itself)."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                continue
            yield number, line
        elif _closes(fence, match, line):
            fence = None


def fenced_blocks(text: str) -> list[list[str]]:
    """The lines of each fenced code block, in order."""
    blocks, current, fence = [], None, None
    for line in text.splitlines():
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence, current = match.group(1), []
        elif _closes(fence, match, line):
            blocks.append(current)
            fence, current = None, None
        else:
            current.append(line)
    return blocks


def iter_links(text: str):
    """(line number, target) of every Markdown link outside fenced code; code spans are not links."""
    for number, line in _outside_fences(text):
        # A code span's content is literal text; keep a placeholder so that [`code`](target) stays a link.
        plain = _CODE_SPAN.sub(lambda m: "code", line)
        for match in _LINK.finditer(plain):
            target = match.group(2)
            if target.startswith("<") and target.endswith(">"):
                target = target[1:-1]
            yield number, target


def _heading_text(raw: str) -> str:
    """The text GitHub renders for a heading's source: code spans literal, links, images and emphasis unwrapped."""
    out = []
    pos = 0
    for match in _CODE_SPAN.finditer(raw):
        out.append(_strip_inline(raw[pos : match.start()]))
        out.append(match.group(2).strip())
        pos = match.end()
    out.append(_strip_inline(raw[pos:]))
    return "".join(out).strip()


def _strip_inline(text: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.replace("*", "")
    return re.sub(r"(?<![^\W_])_+|_+(?![^\W_])", "", text)  # emphasis underscores, not snake_case ones


def github_slug(text: str) -> str:
    """github-slugger's slug of a heading's rendered text: lowercase, punctuation but '-' dropped, spaces to '-'."""
    slug = text.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub gives the headings of a Markdown file (duplicates get -1, -2, ...), plus HTML anchors."""
    occurrences: dict[str, int] = {}
    found: set[str] = set()
    text = path.read_text(encoding="utf-8")
    for _, line in _outside_fences(text):
        for name in _HTML_ANCHOR.findall(line):
            found.add(name)
        match = _ATX.match(line)
        if not match:
            continue
        original = result = github_slug(_heading_text(match.group(2) or ""))
        while result in occurrences:  # github-slugger's rule
            occurrences[original] += 1
            result = f"{original}-{occurrences[original]}"
        occurrences[result] = 0
        found.add(result)
    return found


def check_links(path: Path) -> list[str]:
    """One message per relative link of `path` that does not resolve; empty when all do."""
    problems = []
    cache: dict[Path, set[str]] = {}
    for number, target in iter_links(path.read_text(encoding="utf-8")):
        where = f"{path}:{number}: ({target})"
        if not target or _SCHEME.match(target) or target.startswith("//"):
            if not target:
                problems.append(f"{where} empty link target")
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / unquote(file_part)).resolve() if file_part else path.resolve()
        if not destination.exists():
            problems.append(f"{where} no such file: {destination}")
            continue
        if not anchor:
            continue
        if destination.is_dir() or destination.suffix.lower() not in {".md", ".markdown"}:
            problems.append(f"{where} anchor #{anchor} into a file that is not Markdown")
            continue
        if destination not in cache:
            cache[destination] = anchors(destination)
        if unquote(anchor) not in cache[destination]:
            problems.append(f"{where} no heading with anchor #{anchor} in {destination.name}")
    return problems


def ci_test_command() -> str:
    lines = CI_RUN.read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip() == CI_MARKER)
    return lines[index + 1]


# ---------------------------------------------------------------------------------------------------- the docs


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert path.is_file(), path
    assert check_links(path) == []


def test_docs_folder_has_the_topic_pages():
    names = {p.name for p in (ROOT / "docs").glob("*.md")}
    expected = {
        "README.md",
        "method.md",
        "configuration.md",
        "estimators.md",
        "sandbox.md",
        "math_grading.md",
        "rollout_cache.md",
        "engines.md",
        "measurements.md",
    }
    assert expected <= names, expected - names


def test_docs_index_links_every_page():
    index = ROOT / "docs" / "README.md"
    linked = {
        (index.parent / unquote(target.partition("#")[0])).resolve()
        for _, target in iter_links(index.read_text(encoding="utf-8"))
        if target.partition("#")[0] and not _SCHEME.match(target)
    }
    pages = {p.resolve() for p in (ROOT / "docs").glob("*.md") if p.name != "README.md"}
    assert pages - linked == set()


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, len(lines)


def test_readme_starts_with_the_ci_test_command():
    command = ci_test_command()
    assert command.strip() and "pytest" in command, command
    text = README.read_text(encoding="utf-8")
    assert command in text, "the README no longer has .ci/run's test command verbatim"
    # .ci/run makes its own venv, so its line is the tail of the README's line, which also creates one.
    first_block = fenced_blocks(text)[0]
    assert any(command in line for line in first_block), "the test command is not in the README's first fenced block"
    # The commands come first: the first fenced block precedes every section heading.
    first_fence = next(n for n, line in enumerate(text.splitlines()) if _FENCE.match(line))
    first_section = next(n for n, line in enumerate(text.splitlines()) if line.startswith("## "))
    assert first_fence < first_section


def test_removed_sandbox_helper_is_not_documented():
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        for name in REMOVED_SANDBOX_NAMES:
            assert name not in text, f"{path.relative_to(ROOT)} mentions {name}"


# ---------------------------------------------------------------------------------------------------- the checker


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Cached rollouts (approximate KV cache)", "cached-rollouts-approximate-kv-cache"),
        ("Coming from `GRPOTrainer`", "coming-from-grpotrainer"),
        ("Paper-exact vs efficient, measured", "paper-exact-vs-efficient-measured"),
        ("Recipes: reproducing the paper's training runs", "recipes-reproducing-the-papers-training-runs"),
        (
            "Rollout cache: speed against fidelity (`bench_rollout_cache.py`, `cache_vs_exact.py`, measured in this"
            " session)",
            "rollout-cache-speed-against-fidelity-bench_rollout_cachepy-cache_vs_exactpy-measured-in-this-session",
        ),
        ("The **bold** and _emphasis_ of [a link](x.md)", "the-bold-and-emphasis-of-a-link"),
        ("GPU (not measured in this session)", "gpu-not-measured-in-this-session"),
        ("Targets (CPU)", "targets-cpu"),
        ("50m (52.4M parameters; B=4)", "50m-524m-parameters-b4"),
        ("A -- B", "a----b"),
    ],
)
def test_github_slug(heading, slug):
    assert github_slug(_heading_text(heading)) == slug


def test_checker_reports_broken_links_and_anchors(tmp_path):
    """Positive control: a missing file and a missing anchor are both reported; good and skipped links are not."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "target.md").write_text(
        "# Target page\n\n## Real heading\n\n## Real heading\n\n```\n## Not a heading (fenced)\n```\n",
        encoding="utf-8",
    )
    (tmp_path / "image.png").write_bytes(b"")
    source = tmp_path / "source.md"
    source.write_text(
        "# Source\n\n"
        "## Local section\n\n"
        "[ok file](sub/target.md) [ok anchor](sub/target.md#real-heading)\n"
        "[ok duplicate](sub/target.md#real-heading-1)\n"
        "[ok self](#local-section) [ok `code` text](sub/target.md#target-page) ![ok image](image.png)\n"
        "[external](https://example.com/missing.md#nope) [mail](mailto:someone@example.com)\n"
        "`[inside a code span](missing-in-span.md)`\n"
        "```bash\n[inside a fence](missing-in-fence.md)\n```\n"
        "[broken link](sub/missing.md)\n"
        "[broken anchor](sub/target.md#no-such-heading)\n"
        "[fenced heading is no anchor](sub/target.md#not-a-heading-fenced)\n"
        "[broken self anchor](#nowhere)\n",
        encoding="utf-8",
    )
    problems = check_links(source)
    assert len(problems) == 4, problems
    joined = "\n".join(problems)
    assert "(sub/missing.md) no such file" in joined
    assert "(sub/target.md#no-such-heading) no heading with anchor #no-such-heading" in joined
    assert "(sub/target.md#not-a-heading-fenced) no heading" in joined
    assert "(#nowhere) no heading with anchor #nowhere in source.md" in joined
    for skipped in ("missing-in-fence.md", "missing-in-span.md", "example.com", "mailto"):
        assert skipped not in joined


def test_readme_command_check_reads_ci_run():
    """The marker is in .ci/run and is followed by a command line, so the README check compares something."""
    text = CI_RUN.read_text(encoding="utf-8")
    assert CI_MARKER in text
    assert ci_test_command().startswith("pip install")
