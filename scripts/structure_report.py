"""Structure metrics of the `editing` package, computed from its syntax trees.

Prints the longest functions, the functions with the most parameters (and how many are untyped), and the
`hasattr`/`getattr` calls in the denoising loop's modules, and the imports inside functions (with how many give no
reason in a comment). usage: python scripts/structure_report.py [--top N]
"""

from __future__ import annotations

import argparse
import ast
import io
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "editing"
LOOP_MODULES = ("sampling.py", "core.py", "inversion.py")


def functions(root: Path = PACKAGE):
    """(module path, qualified name, node) of every function in the package."""
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        yield from _walk(tree, path.relative_to(root.parent), "")


def _walk(node: ast.AST, path: Path, prefix: str):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}{child.name}"
            yield path, name, child
            yield from _walk(child, path, f"{name}.")
        elif isinstance(child, ast.ClassDef):
            yield from _walk(child, path, f"{prefix}{child.name}.")


def parameters(node: ast.FunctionDef) -> tuple[int, int]:
    """(parameters, untyped parameters), not counting self/cls, *args or **kwargs."""
    args = node.args
    named = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    if named and named[0].arg in ("self", "cls"):
        named = named[1:]
    return len(named), sum(a.annotation is None for a in named)


def probes(root: Path = PACKAGE) -> list[tuple[str, int]]:
    """(module:line, call) of every hasattr/getattr call in the loop's modules."""
    found = []
    for name in LOOP_MODULES:
        path = root / name
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr"):
                found.append((f"{name}:{node.lineno}", node.func.id))
    return found


def function_imports(root: Path = PACKAGE) -> list[tuple[str, bool]]:
    """(module:line, has a reason) of every import inside a function.

    The reason is a comment on the import's line or the line above; imports on consecutive lines share the
    comment above the first of them.
    """
    found = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        commented = {token.start[0] for token in tokens if token.type == tokenize.COMMENT}
        nodes = {}
        for function in ast.walk(ast.parse(source)):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        nodes[node.lineno] = node
        explained: set[int] = set()
        for line in sorted(nodes):
            node = nodes[line]
            above = [n.lineno for n in nodes.values() if n.end_lineno == line - 1]
            reasoned = (
                bool(commented & set(range(line, node.end_lineno + 1))) or line - 1 in commented or bool(explained & set(above))
            )
            if reasoned:
                explained.add(line)
            found.append((f"{path.relative_to(root.parent)}:{line}", reasoned))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=5)
    top = parser.parse_args().top
    found = list(functions())
    lengths = sorted(found, key=lambda f: f[2].end_lineno - f[2].lineno + 1, reverse=True)
    print("longest functions (lines):")
    for path, name, node in lengths[:top]:
        print(f"  {node.end_lineno - node.lineno + 1:4d}  {path}:{node.lineno} {name}")
    counted = sorted(found, key=lambda f: parameters(f[2])[0], reverse=True)
    print("most parameters (untyped):")
    for path, name, node in counted[:top]:
        total, untyped = parameters(node)
        print(f"  {total:4d} ({untyped})  {path}:{node.lineno} {name}")
    over = [f for f in found if parameters(f[2])[0] > 6]
    print(f"functions with more than 6 parameters: {len(over)}")
    print(f"untyped parameters: {sum(parameters(f[2])[1] for f in found)} in {len(found)} functions")
    loop = probes()
    print(f"hasattr/getattr calls in {', '.join(LOOP_MODULES)}: {len(loop)}")
    for where, call in loop:
        print(f"  {where} {call}")
    imports = function_imports()
    bare = [where for where, reasoned in imports if not reasoned]
    print(f"imports inside functions: {len(imports)}, without a reason comment: {len(bare)}")
    for where in bare[:top]:
        print(f"  {where}")


if __name__ == "__main__":
    main()
