"""dbt/macros/cdc_version.sql, rendered from bankde.cdc.version so dbt and the sink share one encoding."""

from __future__ import annotations

from pathlib import Path

from bankde.cdc import version

# Relative to the dbt project directory; committed, so plain `dbt run` needs no bankde step.
CDC_VERSION_MACROS = Path("macros") / "cdc_version.sql"


def _jinja(name: str) -> str:
    """A macro argument spliced into the SQL the Python function builds."""
    return "{{ " + name + " }}"


def _macro(name: str, args: tuple[str, ...], body: str, doc: str) -> str:
    return (
        f"{{#- {doc} -#}}\n"
        f"{{% macro {name}({', '.join(args)}) -%}}\n"
        f"    {body}\n"
        "{%- endmacro %}\n"
    )


def render_dbt_macros() -> str:
    """The text of CDC_VERSION_MACROS: each macro is the SQL of one bankde.cdc.version function."""
    header = (
        "{#- GENERATED from bankde.cdc.version (POS_BITS = "
        f"{version.POS_BITS}) by `bankde dbt macros`: do not edit.\n"
        "    _version = commit LSN in the high bits, position inside the transaction in the low\n"
        "    POS_BITS; the arguments are SQL expressions. -#}\n"
    )
    macros = [
        _macro(
            "cdc_make_version",
            ("lsn", "pos"),
            version.sql_make_version(_jinja("lsn"), _jinja("pos")),
            "UInt128 version of the change at position `pos` of the transaction committed at `lsn`.",
        ),
        _macro(
            "cdc_version_lsn",
            ("cdc_version",),
            version.sql_version_lsn(_jinja("cdc_version")),
            "UInt64 commit LSN a version was made from.",
        ),
        _macro(
            "cdc_max_version_at",
            ("lsn",),
            version.sql_max_version_at(_jinja("lsn")),
            "The largest version any change committed at `lsn` can have.",
        ),
    ]
    return header + "\n" + "\n".join(macros)


def write_dbt_macros(project: Path) -> bool:
    """Write the rendered macros into the dbt project at `project`; True when the file changed."""
    path = project / CDC_VERSION_MACROS
    text = render_dbt_macros()
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.write_text(text, encoding="utf-8")
    return True
