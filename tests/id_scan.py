"""The AST scan behind the registry tests (``test_methods.py``, ``test_models.py``): where does
a module test a value against an id of a registry (a method id, a model id) as a string?"""

from __future__ import annotations

import ast


def id_tests(source: str, ids: tuple[str, ...], min_part: int = 3) -> list[tuple[int, str]]:
    """``(line, text)`` of every place ``source`` tests a value against one of ``ids``:
    ``x == "lbp_wht"``, ``x in ("full_bp", "lora")``, ``"lora" in x``,
    ``x.startswith("efficientformerv2")``, ``case "losa":``. A string of at least
    ``min_part`` characters counts as part of an id in substring and prefix / suffix tests."""
    found = []

    def is_id(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and node.value in ids

    def has_id(node: ast.AST) -> bool:
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return any(is_id(e) for e in node.elts)
        return is_id(node)

    def part_of_id(node: ast.AST, test) -> bool:
        return (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and len(node.value) >= min_part
            and any(test(i, node.value) for i in ids)
        )

    for node in ast.walk(ast.parse(source)):
        hit = False
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            hit = any(has_id(o) for o in operands)
            # "lora" in method: a substring test against an id
            hit |= any(
                isinstance(op, ast.In | ast.NotIn) and part_of_id(left, lambda i, c: c in i)
                for op, left in zip(node.ops, operands)
            )
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            if name in ("startswith", "endswith") and node.args:
                arg = node.args[0]
                args = arg.elts if isinstance(arg, ast.Tuple) else [arg]
                test = (lambda i, c: i.startswith(c)) if name == "startswith" else str.endswith
                hit = any(part_of_id(a, test) for a in args)
        elif isinstance(node, ast.MatchValue):
            hit = is_id(node.value)
        if hit:
            found.append((node.lineno, ast.get_source_segment(source, node) or ""))
    return found
