from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.core.management.base import BaseCommand
from django.db import models

from ...graph import Dependency, Spec, get_graph
from ._selection import add_target_arguments, selected_groups


@dataclass(frozen=True)
class Source:
    """What a maintained field reads: a field of a model, or (``field`` None)
    any change to its rows."""

    model: type[models.Model]
    field: str | None

    @property
    def name(self) -> str:
        label = self.model._meta.label
        return f"{label}.{self.field}" if self.field else f"{label} (any change)"


class Command(BaseCommand):
    help = (
        "Show what each maintained field is computed from: a text tree, or a graph "
        "in Graphviz (--format dot) or Mermaid (--format mermaid) syntax."
    )

    def add_arguments(self, parser: Any) -> None:
        add_target_arguments(parser)
        parser.add_argument(
            "--format",
            choices=["text", "dot", "mermaid"],
            default="text",
            help="text: a tree, model, maintained field, depends_on paths; dot: for Graphviz "
            "(dot -Tsvg); mermaid: a flowchart for Mermaid (GitHub, GitLab and Sphinx render it).",
        )

    def handle(self, *args: Any, targets: list[str], labels: list[str] | None, format: str, **options: Any) -> None:
        specs = ordered(spec for _, group in selected_groups(targets, labels) for spec in group)
        draw = {"text": text, "dot": dot, "mermaid": mermaid}[format]
        self.stdout.write(draw(specs), ending="")


def ordered(specs: Iterable[Spec]) -> list[Spec]:
    """``specs`` in an order that does not change between processes: models in the
    order a rebuild visits them (children first), then by label; each model's fields
    in the order it declares them."""
    graph = get_graph()
    layer = {spec: layer for (_, group), layer in zip(graph.order, graph.layers) for spec in group}
    specs = list(specs)
    first: dict[type[models.Model], int] = {}
    for spec in specs:
        first[spec.model] = min(first.get(spec.model, layer[spec]), layer[spec])
    return sorted(
        specs,
        key=lambda spec: (first[spec.model], spec.model._meta.label, spec.model._meta.fields.index(spec.field)),
    )


def source(dep: Dependency) -> Source:
    """What the path of ``dep`` ends in."""
    names = dep.path.split("__")
    model = dep.hops[-1].model
    if len(dep.hops) - 1 == len(names):  # a hop per name: the path ends in a relation
        return Source(model, None)
    name = model._meta.pk.name if names[-1] == "pk" else names[-1]
    return Source(model, model._meta.get_field(name).name)


def sources(spec: Spec) -> list[tuple[str, Source]]:
    """(path, what it reaches) for each path of ``spec``; a field that depends on
    nothing is recomputed on every save of its row."""
    if not spec.deps:
        return [("", Source(spec.model, None))]
    return [(dep.path, source(dep)) for dep in spec.deps]


def _is_maintained(found: Source) -> bool:
    node = get_graph().node(found.model)
    return found.field is not None and node is not None and any(
        spec.field.name == found.field for spec in (*node.own_row, *node.related)
    )


def text(specs: list[Spec]) -> str:
    """A tree: each model, its maintained fields, and for each field what it depends on."""
    lines = []
    for position, spec in enumerate(specs):
        if position == 0 or specs[position - 1].model is not spec.model:
            lines.append(spec.model._meta.label)
        last_field = position + 1 == len(specs) or specs[position + 1].model is not spec.model
        label = f" [{spec.label}]" if spec.label else ""
        lines.append(f"{'`-- ' if last_field else '|-- '}{spec.field.name}{label}")
        reads = sources(spec)
        for index, (path, found) in enumerate(reads):
            branch = "`-- " if index + 1 == len(reads) else "|-- "
            what = f"{path}: {found.name}" if path else "every save of the row"
            mark = " (maintained)" if _is_maintained(found) else ""
            lines.append(f"{'    ' if last_field else '|   '}{branch}{what}{mark}")
    return "".join(f"{line}\n" for line in lines)


def _nodes(specs: list[Spec]) -> tuple[dict[type[models.Model], list[Source]], list[tuple[Source, Source, str]]]:
    """The nodes of the picture, by model, and its edges (what is read, what is
    maintained from it, the path), in the order of ``specs``."""
    by_model: dict[type[models.Model], list[Source]] = {}
    edges = []

    def add(node: Source) -> None:
        if node not in by_model.setdefault(node.model, []):
            by_model[node.model].append(node)

    for spec in specs:
        add(Source(spec.model, spec.field.name))
    for spec in specs:
        target = Source(spec.model, spec.field.name)
        for path, found in sources(spec):
            add(found)
            edges.append((found, target, path))
    return by_model, edges


def dot(specs: list[Spec]) -> str:
    """A Graphviz digraph: a cluster per model, maintained fields in bold, an edge
    from what each reads, labelled with the path."""
    by_model, edges = _nodes(specs)
    lines = [
        "digraph maintained_fields {",
        '  rankdir=LR; fontname="Helvetica";',
        '  node [shape=box, fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for number, (model, nodes) in enumerate(by_model.items()):
        lines.append(f"  subgraph cluster_{number} {{")
        lines.append(f"    label={_quoted(model._meta.label)};")
        for node in nodes:
            style = ", style=bold" if _is_maintained(node) else ""
            lines.append(f"    {_quoted(node.name)} [label={_quoted(node.field or '(any change)')}{style}];")
        lines.append("  }")
    for found, target, path in edges:
        label = f" [label={_quoted(path)}]" if path else ""
        lines.append(f"  {_quoted(found.name)} -> {_quoted(target.name)}{label};")
    lines.append("}")
    return "".join(f"{line}\n" for line in lines)


def mermaid(specs: list[Spec]) -> str:
    """A Mermaid flowchart: a subgraph per model, maintained fields in bold, an
    edge from what each reads, labelled with the path."""
    by_model, edges = _nodes(specs)
    ids = {node: f"n{number}" for number, node in enumerate(node for nodes in by_model.values() for node in nodes)}
    lines = ["flowchart LR"]
    for number, (model, nodes) in enumerate(by_model.items()):
        lines.append(f'  subgraph m{number} ["{model._meta.label}"]')
        lines.extend(f'    {ids[node]}["{node.field or "(any change)"}"]' for node in nodes)
        lines.append("  end")
    for found, target, path in edges:
        arrow = f'-->|"{path}"|' if path else "-->"
        lines.append(f"  {ids[found]} {arrow} {ids[target]}")
    maintained = [ids[node] for node in ids if _is_maintained(node)]
    if maintained:
        lines.append("  classDef maintained font-weight:bold,stroke-width:2px")
        lines.append(f"  class {','.join(maintained)} maintained")
    return "".join(f"{line}\n" for line in lines)


def _quoted(text: str) -> str:
    """``text`` as a DOT string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
