"""Print the pip requirements listed under `- pip:` in a conda environment file.

Used by `make setup` so environment.yml stays the single source of dependencies. Stdlib only:
it runs before any venv exists.
"""
import sys


def pip_requirements(path: str) -> list[str]:
    """Return the requirement strings of the `pip:` list in the conda env file at `path`."""
    reqs, in_pip, pip_indent = [], False, 0
    for raw in open(path, encoding="utf-8"):
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        item = line.strip()
        if item == "- pip:":
            in_pip, pip_indent = True, indent
            continue
        if in_pip:
            if indent <= pip_indent:
                in_pip = False
            elif item.startswith("- "):
                reqs.append(item[2:].strip())
    return reqs


if __name__ == "__main__":
    print("\n".join(pip_requirements(sys.argv[1] if len(sys.argv) > 1 else "environment.yml")))
