"""`bankde dbt docs`: dbt's documentation site for the project, generated offline, paths printed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bankde.errors import BankdeError

if TYPE_CHECKING:
    from bankde.settings import Settings
    from bankde.warehouse.session import WarehouseSession

# Two template slips of dbt-docs' bundled index.html that make the browser request URLs that
# do not exist (404 in the console, and in a server's log): an Angular expression in a plain
# attribute is requested literally before Angular replaces it, and a webpack require() was
# left unexpanded in the favicon link. Rewritten to what the page meant.
_FIXES: tuple[tuple[str, str], ...] = (
    ('<use xlink:href="{{ getIcon(', '<use ng-attr-xlink:href="{{ getIcon('),
    ("href=\"${require('./assets/favicons/favicon.ico')}\"", 'href="data:,"'),
)


class DocsFailed(BankdeError):
    """dbt docs generate did not finish (its own output above says why)."""


@dataclass(frozen=True)
class DocsSite:
    """The generated site: index.html (fetches manifest.json and catalog.json beside it, so it
    needs an HTTP server: `bankde dbt docs serve`) and static_index.html (both inlined)."""

    target: Path
    index: Path
    static_index: Path


def target_dir(settings: Settings) -> Path:
    """dbt's target/ directory for these settings (the runner's DBT_TARGET_PATH)."""
    from bankde.transform.runner import dbt_env

    return Path(dbt_env(settings)["DBT_TARGET_PATH"])


def generate_docs(
    settings: Settings, session: WarehouseSession, extra: Sequence[str] = ()
) -> DocsSite:
    """`dbt docs generate --static` on the warehouse (catalog read from it), then the two
    template slips fixed in both pages. No network: the pages carry their scripts."""
    from bankde.transform.runner import run_dbt

    res = run_dbt(["docs", "generate", "--static", *extra], settings, session)
    target = target_dir(settings)
    site = DocsSite(target, target / "index.html", target / "static_index.html")
    if not res.success or not site.index.is_file():
        raise DocsFailed("dbt docs generate failed (see dbt's output above)")
    for page in (site.index, site.static_index):
        if page.is_file():
            fix_page(page)
    return site


def fix_page(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    fixed = text
    for old, new in _FIXES:
        fixed = fixed.replace(old, new)
    if fixed != text:
        tmp = page.with_suffix(".html.tmp")
        tmp.write_text(fixed, encoding="utf-8")
        tmp.replace(page)
