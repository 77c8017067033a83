"""Fails when two modules of models/, bench/ or reports/ reach each other through imports (function-level ones
included; annotation-only ones not), naming each pair and both chains. `nox -s lint` runs it."""

import sys

import grimp


def cycles(graph) -> list[tuple[list[str], list[str]]]:
    found = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back and module < imported:
                found.append(([module, imported], list(back)))
    return found


if __name__ == "__main__":
    found = cycles(grimp.build_graph("models", "bench", "reports", exclude_type_checking_imports=True))
    for there, back in found:
        print(f"import cycle: {' -> '.join(there)} and back: {' -> '.join(back)}")
    print(f"{len(found)} import cycles")
    sys.exit(1 if found else 0)
