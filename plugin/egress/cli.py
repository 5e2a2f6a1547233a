"""The `ferry-egress` CNI binary. Always standalone: ferryd serves the main plugin's
requests only, and the egress ADD is a handful of netlink calls and map updates."""

from plugin.cli import serve

TYPE_CHECKING = False  # as plugin.cli: no typing import on the exec path
if TYPE_CHECKING:
    from typing import Any


def _engine(req: "Any") -> "dict[str, Any] | None":
    from plugin.egress import engine

    return engine.run(req)


def main() -> None:
    serve(_engine)


if __name__ == "__main__":
    main()
