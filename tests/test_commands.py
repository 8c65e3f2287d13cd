"""rebuild_maintained_fields repairs; check_maintained_fields reports and fails."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from decimal import Decimal
from io import StringIO
from pathlib import Path
from xml.etree import ElementTree

import pytest
from django.core.management import CommandError, call_command
from django.core.serializers.json import DjangoJSONEncoder

from maintained_fields import maintained_values_written, override_autoupdate
from tests.conftest import fresh
from tests.testapp.models import Lab, Sample, Study, Tag

pytestmark = pytest.mark.django_db


@pytest.fixture
def stale(lab, study):
    """Rows loaded with maintenance disabled: every maintained value is stale."""
    with override_autoupdate(mode="disabled"):
        other = Study.objects.create(name="Other study", lab=lab)
        for index in range(7):
            Sample.objects.create(study=study if index % 2 else other, name=f"s{index}", weight=Decimal("1.25"))
        study.tags.add(Tag.objects.create(name="red"))
    return study, other


def run(*args):
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_check_is_silent_when_all_is_right(study):
    Sample.objects.create(study=study, name="a")
    assert run("check_maintained_fields") == ("", "")
    assert run("check_maintained_fields", "--deep") == ("", "")


def test_check_lists_drift_and_fails(stale):
    study, _ = stale
    with pytest.raises(CommandError, match=r"maintained value\(s\) differ.*rebuild_maintained_fields"):
        run("check_maintained_fields", "testapp.Study")
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("check_maintained_fields", "testapp.Study", stdout=out)
    assert f"testapp.Study pk={study.pk} sample_count: stored 0, computed 3" in out.getvalue()
    assert "testapp.Sample" not in out.getvalue()


def test_rebuild_repairs_everything_in_dependency_order(lab, stale):
    study, other = stale
    out, _ = run("rebuild_maintained_fields", "--verbosity", "1")
    assert "Recomputed maintained fields on" in out
    assert (fresh(study).sample_count, fresh(other).sample_count) == (3, 4)
    assert fresh(study).summary == "Soil survey: 3 samples"
    assert fresh(lab).sample_total == 7
    assert fresh(study).tag_names == "red"
    assert set(Sample.objects.values_list("code", flat=True)) == {f"S{i}" for i in range(7)}
    assert run("check_maintained_fields") == ("", "")



def test_rebuild_summary_counts_each_row_once(lab, stale):
    # Study's fields are rebuilt in two groups (summary reads sample_count): its rows count once.
    out, _ = run("rebuild_maintained_fields", "testapp", "--verbosity", "1")
    total, counts = re.fullmatch(r"Recomputed maintained fields on (\d+) row\(s\) \((.*)\)\.\n", out).groups()
    # testapp's rows of models with maintained fields: 7 samples, 2 studies, the lab, the tag, no project.
    assert sorted(counts.split(", ")) == ["testapp.Lab 1", "testapp.Sample 7", "testapp.Study 2", "testapp.Tag 1"]
    assert total == "11"

def test_rebuild_one_model_updates_what_depends_on_it(lab, stale):
    study, _ = stale
    run("rebuild_maintained_fields", "testapp.Study", "--verbosity", "0")
    assert fresh(study).sample_count == 3
    assert fresh(lab).sample_total == 7  # Lab was not named, but depends on the counts
    assert Sample.objects.filter(code="").count() == 7  # Sample was not named


def test_rebuild_by_label(lab, stale):
    study, _ = stale
    run("rebuild_maintained_fields", "--labels", "weights", "--verbosity", "0")
    assert fresh(study).total_weight == Decimal("3.75")
    assert fresh(study).sample_count == 0


def test_rebuild_in_batches(stale, settings):
    settings.MAINTAINED_FIELDS = {"BATCH_SIZE": 2}
    run("rebuild_maintained_fields", "--verbosity", "0")
    assert run("check_maintained_fields") == ("", "")


def test_unknown_targets_and_labels_are_clear_errors(db):
    with pytest.raises(CommandError, match="'testapp.Smaple' names no model with maintained fields"):
        run("rebuild_maintained_fields", "testapp.Smaple")
    with pytest.raises(CommandError, match="No maintained field has the label"):
        run("check_maintained_fields", "--labels", "nope")
    # A label that exists, on none of the fields of the models named: before, "0 rows", exit 0.
    with pytest.raises(CommandError, match="No maintained field of testapp.Sample has the label 'weights'"):
        run("rebuild_maintained_fields", "testapp.Sample", "--labels", "weights")


def test_check_json_report(stale):
    study, other = stale
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("check_maintained_fields", "testapp.Study", "--format", "json", stdout=out)
    report = json.loads(out.getvalue())
    assert report["count"] == len(report["drift"]) > 0
    assert {"model": "testapp.Study", "pk": study.pk, "field": "total_weight", "stored": "0.00",
            "computed": "3.75"} in report["drift"]


def test_check_json_report_when_all_is_right(db):
    out = StringIO()
    call_command("check_maintained_fields", "--format", "json", stdout=out)
    assert json.loads(out.getvalue()) == {"drift": [], "count": 0}


def test_batch_size_option(stale, sql):
    with sql() as queries:
        run("rebuild_maintained_fields", "testapp.Sample", "--batch-size", "2", "--verbosity", "0")
    # The keys of each statement that reads samples by key: "IN (1, 2)", or
    # on PostgreSQL "= ANY('{1,2}'::int2[])".
    by_key = re.compile(r'FROM "testapp_sample" WHERE "testapp_sample"."id" (?:IN \(([^)]*)\)|= ANY\(\'\{([^}]*)\})')
    keys = [re.split(r", ?", listed or array) for q in queries for listed, array in by_key.findall(q)]
    assert len(keys) >= 4  # 7 rows, 2 a batch
    assert all(len(batch) <= 2 for batch in keys)
    assert run("check_maintained_fields", "testapp.Sample") == ("", "")
    with pytest.raises(CommandError, match="0 is not a positive number"):
        run("rebuild_maintained_fields", "--batch-size", "0")


@pytest.mark.django_db(databases=["default", "other"])
def test_database_option():
    with override_autoupdate(mode="disabled"):
        study = Study.objects.using("other").create(name="elsewhere")
        Sample.objects.using("other").create(study=study, name="a")
    assert run("check_maintained_fields") == ("", "")
    with pytest.raises(CommandError):
        run("check_maintained_fields", "--database", "other")
    run("rebuild_maintained_fields", "--database", "other", "--verbosity", "0")
    assert Study.objects.using("other").get().sample_count == 1


@pytest.mark.parametrize("targets", [(), ("testapp.Sample",)])
def test_a_rebuild_recomputes_each_row_once(targets, lab, monkeypatch):
    # Samples come in batches of 5, each touching every study: the studies
    # must still be recomputed once, after all their samples, not per batch.
    with override_autoupdate(mode="disabled"):
        studies = [Study.objects.create(name=f"s{n}", lab=lab) for n in range(4)]
        Sample.objects.bulk_create([Sample(study=studies[n % 4], name=f"x{n}", weight=1) for n in range(40)])
    computed = []
    compute = Study.compute_sample_count
    monkeypatch.setattr(Study, "compute_sample_count", lambda self: computed.append(self.pk) or compute(self))
    run("rebuild_maintained_fields", *targets, "--batch-size", "5")
    assert sorted(computed) == sorted(study.pk for study in studies)
    for study in studies:
        assert fresh(study).sample_count == Sample.objects.filter(study=study).count() == 10
    lab.refresh_from_db()
    assert lab.sample_total == 40
    assert {sample.study_name for sample in Sample.objects.all()} == {study.name for study in studies}


class Terminal(StringIO):
    """Output that says it is a terminal, as a shell's stdout and stderr do."""

    def isatty(self):
        return True


def screen(output):
    """The lines a terminal shows after ``output``: a carriage return goes
    back to the start of the line, later characters overwrite earlier ones."""
    lines, column = [[]], 0
    for char in output:
        if char == "\r":
            column = 0
        elif char == "\n":
            lines.append([])
            column = 0
        else:
            line = lines[-1]
            line[column:column + 1] = [char]
            column += 1
    return ["".join(line).rstrip() for line in lines if "".join(line).strip()]


def test_progress_bar_is_plain_and_log_lines_stay_whole(stale, monkeypatch):
    from django.core.management.color import color_style

    from maintained_fields.management.commands.rebuild_maintained_fields import Command

    study, other = stale
    compute = Study.compute_sample_count

    def logging_compute(self):  # a method that logs, as methods do
        logging.getLogger("tests.testapp").warning("Counting the samples of %s.", self.name)
        return compute(self)

    monkeypatch.setattr(Study, "compute_sample_count", logging_compute)
    terminal = Terminal()
    # What a shell gives manage.py: stdout and stderr on a colour terminal.
    command = Command(stdout=Terminal(), stderr=terminal, force_color=True)
    assert command.stderr.style_func("x") == color_style(force_color=True).ERROR("x") != "x"
    handler = logging.StreamHandler(terminal)  # a console handler, as LOGGING configures one
    logging.root.addHandler(handler)
    logging.getLogger("maintained_fields").setLevel(logging.INFO)
    try:
        call_command(command, "testapp.Sample", "testapp.Study")
    finally:
        logging.root.removeHandler(handler)
        logging.getLogger("maintained_fields").setLevel(logging.NOTSET)
    output = terminal.getvalue()
    assert "\x1b[" not in output  # no colour, no style: a plain bar
    shown = screen(output)
    bars = [line for line in shown if line.startswith("testapp.")]
    logged = [line for line in shown if not line.startswith("testapp.")]
    # One finished bar per group of fields, "Model (fields): 100%|...| rows/rows ...".
    finished = [re.fullmatch(r"(testapp\.\w+) \((.*)\): 100%\|#+\| (\d+)/(\d+) .*", bar) for bar in bars]
    assert all(finished), bars
    groups = [match.groups() for match in finished]
    assert {(model, done, total) for model, _, done, total in groups} == {
        ("testapp.Sample", "7", "7"),
        ("testapp.Study", "2", "2"),
    }
    study_fields = [field for model, fields, _, _ in groups if model == "testapp.Study" for field in fields.split(", ")]
    assert sorted(study_fields) == [
        "aliquot_volume", "project_names", "sample_count", "slug", "summary", "tag_names", "total_weight"
    ]
    # Each line logged during the rebuild, the method's included, stands whole on a line of its own.
    assert sorted(line for line in logged if line.startswith("Counting")) == [
        "Counting the samples of Other study.",
        "Counting the samples of Soil survey.",
    ]
    assert [line.split(" on 'default': ")[0] for line in logged if not line.startswith("Counting")] == [
        *(f"Rebuilt {model} ({fields})" for model, fields, _, _ in groups),
        "Maintained fields",
    ]
    assert all(
        re.fullmatch(r".* on 'default': recomputed \d+ row\(s\).*, \d+ changed, in \d+\.\d{3}s\.", line)
        for line in logged
        if not line.startswith("Counting")
    )


def stale_values_expected(lab, study, other):
    """What a rebuild must change in ``stale``'s rows, counted here:
    {(model, pk, field): (stored, computed)}."""
    red = Tag.objects.get(name="red")
    expected = {
        ("testapp.Lab", lab.pk, "sample_total"): (0, 7),
        ("testapp.Tag", red.pk, "study_count"): (0, 1),
        ("testapp.Study", study.pk, "sample_count"): (0, 3),
        ("testapp.Study", study.pk, "total_weight"): (Decimal("0.00"), Decimal("3.75")),
        ("testapp.Study", study.pk, "tag_names"): ("", "red"),
        ("testapp.Study", study.pk, "summary"): ("Soil survey: 0 samples", "Soil survey: 3 samples"),
        ("testapp.Study", other.pk, "slug"): ("", "other-study"),
        ("testapp.Study", other.pk, "sample_count"): (0, 4),
        ("testapp.Study", other.pk, "total_weight"): (Decimal("0.00"), Decimal("5.00")),
        ("testapp.Study", other.pk, "summary"): ("", "Other study: 4 samples"),
    }
    for sample in Sample.objects.all():
        parent = study if sample.study_id == study.pk else other
        expected[("testapp.Sample", sample.pk, "code")] = ("", sample.name.upper())
        expected[("testapp.Sample", sample.pk, "study_name")] = ("", parent.name)
        expected[("testapp.Sample", sample.pk, "lab_name")] = ("", lab.name)
    return expected


def snapshot():
    """Every row of testapp, as the database holds it."""
    return {model: list(model.objects.order_by("pk").values()) for model in (Lab, Tag, Study, Sample)}


def test_deep_check_reports_what_a_rebuild_would_change_and_writes_nothing(lab, stale):
    study, other = stale
    expected = stale_values_expected(lab, study, other)
    # The default check compares each row with what the rows it reads hold now:
    # a lab over stale study counts, or a summary over a stale count, looks right.
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("check_maintained_fields", "--format", "json", stdout=out)
    shallow = {(d["model"], d["pk"], d["field"]) for d in json.loads(out.getvalue())["drift"]}
    assert ("testapp.Lab", lab.pk, "sample_total") not in shallow
    assert ("testapp.Study", study.pk, "summary") not in shallow

    before = snapshot()
    written = []
    receiver = lambda **kwargs: written.append(kwargs)  # noqa: E731
    maintained_values_written.connect(receiver)
    try:
        out = StringIO()
        with pytest.raises(CommandError, match=rf"^{len(expected)} maintained value\(s\) differ"):
            call_command("check_maintained_fields", "--deep", "--format", "json", stdout=out)
    finally:
        maintained_values_written.disconnect(receiver)
    report = json.loads(out.getvalue())
    assert report["count"] == len(report["drift"]) == len(expected)
    assert {(d["model"], d["pk"], d["field"]): (d["stored"], d["computed"]) for d in report["drift"]} == {
        key: tuple(json.loads(json.dumps(values, cls=DjangoJSONEncoder))) for key, values in expected.items()
    }
    assert snapshot() == before  # nothing written...
    assert written == []  # ...and no receiver told otherwise


def test_dry_run_prints_what_the_rebuild_then_changes(lab, stale):
    study, other = stale
    expected = stale_values_expected(lab, study, other)
    before = snapshot()
    out, _ = run("rebuild_maintained_fields", "--dry-run")
    with pytest.raises(CommandError):
        call_command("check_maintained_fields", "--deep", stdout=(deep := StringIO()))
    *listed, summary = out.splitlines()
    assert listed == deep.getvalue().splitlines()  # the same lines as check_maintained_fields --deep
    assert summary == f"{len(expected)} maintained value(s) would change; nothing was written."
    assert snapshot() == before
    # The rebuild itself then changes exactly those values, to the values listed.
    run("rebuild_maintained_fields", "--verbosity", "0")
    after = snapshot()
    changed = {
        f"{model._meta.label} pk={old['id']} {field}: stored {old[field]!r}, computed {new[field]!r}"
        for model in before
        for old, new in zip(before[model], after[model])
        for field in old
        if old[field] != new[field]
    }
    assert sorted(changed) == sorted(listed)
    assert {line.split(":")[0] for line in listed} == {f"{m} pk={pk} {f}" for m, pk, f in expected}


# Each maintained field of testapp, from what it reads, over which path: as models.py declares them.
TESTAPP_EDGES = {
    ("testapp.Sample.name", "testapp.Sample.code", "name"),
    ("testapp.Study.name", "testapp.Sample.study_name", "study__name"),
    ("testapp.Lab.name", "testapp.Sample.lab_name", "study__lab__name"),
    ("testapp.Study (any change)", "testapp.Study.slug", ""),  # no depends_on: every save
    ("testapp.Sample (any change)", "testapp.Study.sample_count", "samples"),
    ("testapp.Sample.weight", "testapp.Study.total_weight", "samples__weight"),
    ("testapp.Aliquot.volume", "testapp.Study.aliquot_volume", "samples__aliquots__volume"),
    ("testapp.Tag.name", "testapp.Study.tag_names", "tags__name"),
    ("testapp.Project.name", "testapp.Study.project_names", "projects__name"),
    ("testapp.Study.name", "testapp.Study.summary", "name"),
    ("testapp.Study.sample_count", "testapp.Study.summary", "sample_count"),
    ("testapp.Study.sample_count", "testapp.Lab.sample_total", "studies__sample_count"),
    ("testapp.Study (any change)", "testapp.Project.study_count", "studies"),
    ("testapp.Study (any change)", "testapp.Tag.study_count", "studies"),
}
TESTAPP_MAINTAINED = {target for _, target, _ in TESTAPP_EDGES}


def test_graph_as_a_text_tree():
    out, _ = run("graph_maintained_fields", "testapp.Lab", "testapp.Sample")
    assert out == (
        "testapp.Sample\n"
        "|-- code\n"
        "|   `-- name: testapp.Sample.name\n"
        "|-- study_name\n"
        "|   `-- study__name: testapp.Study.name\n"
        "`-- lab_name\n"
        "    `-- study__lab__name: testapp.Lab.name\n"
        "testapp.Lab\n"
        "`-- sample_total [counts]\n"
        "    `-- studies__sample_count: testapp.Study.sample_count (maintained)\n"
    )
    out, _ = run("graph_maintained_fields", "--labels", "weights")
    assert out == "testapp.Study\n`-- total_weight [weights]\n    `-- samples__weight: testapp.Sample.weight\n"
    with pytest.raises(CommandError, match="'testapp.Smaple' names no model with maintained fields"):
        run("graph_maintained_fields", "testapp.Smaple")


def dot_graph(source):
    """{node: (label, bold)} and {(from, to, label)} of the command's dot output."""
    nodes = {
        name: (label, bool(bold))
        for name, label, bold in re.findall(r'^    "(.+)" \[label="(.*?)"(, style=bold)?\];$', source, re.M)
    }
    edges = set(re.findall(r'^  "(.+?)" -> "(.+?)"(?: \[label="(.*)"\])?;$', source, re.M))
    return nodes, edges


def test_graph_in_dot():
    out, _ = run("graph_maintained_fields", "testapp", "--format", "dot")
    nodes, edges = dot_graph(out)
    assert edges == TESTAPP_EDGES
    assert {name for name, (_, bold) in nodes.items() if bold} == TESTAPP_MAINTAINED
    assert set(nodes) == {name for edge in TESTAPP_EDGES for name in edge[:2]}
    assert nodes["testapp.Study.sample_count"] == ("sample_count", True)
    assert nodes["testapp.Sample (any change)"] == ("(any change)", False)
    # One cluster per model, labelled with it.
    assert sorted(re.findall(r'^    label="(.+)";$', out, re.M)) == [
        "testapp.Aliquot", "testapp.Lab", "testapp.Project", "testapp.Sample", "testapp.Study", "testapp.Tag"
    ]
    if shutil.which("dot"):  # Graphviz, where installed, reads it
        subprocess.run(["dot", "-Tsvg"], input=out, text=True, check=True, capture_output=True)


def test_graph_in_mermaid():
    out, _ = run("graph_maintained_fields", "testapp", "--format", "mermaid")
    assert out.startswith("flowchart LR\n")
    names, model = {}, None
    for line in out.splitlines():
        if found := re.fullmatch(r'  subgraph m\d+ \["(.+)"\]', line):
            model = found[1]
        elif found := re.fullmatch(r'    (n\d+)\["(.+)"\]', line):
            names[found[1]] = f"{model}.{found[2]}" if found[2] != "(any change)" else f"{model} (any change)"
    edges = {
        (names[source], names[target], label or "")
        for source, label, target in re.findall(r'^  (n\d+) -->(?:\|"(.*)"\|)? (n\d+)$', out, re.M)
    }
    assert edges == TESTAPP_EDGES
    bold = re.search(r"^  class (\S+) maintained$", out, re.M)[1].split(",")
    assert {names[node] for node in bold} == TESTAPP_MAINTAINED


def svg_graph(svg):
    """{node: (label, bold)} and {(from, to, label)} drawn in a Graphviz SVG."""
    namespace = {"svg": "http://www.w3.org/2000/svg"}
    nodes, edges = {}, set()
    for group in ElementTree.fromstring(svg).iter("{http://www.w3.org/2000/svg}g"):
        title = group.findtext("svg:title", namespaces=namespace)
        texts = [text.text for text in group.findall("svg:text", namespace)]
        if group.get("class") == "node":
            bold = any(shape.get("stroke-width") == "2" for shape in group.findall("svg:polygon", namespace))
            nodes[title] = (texts[0], bold)
        elif group.get("class") == "edge":
            edges.add((*title.split("->"), texts[0] if texts else ""))
    return nodes, edges


def test_the_docs_show_the_example_projects_graph():
    """docs/example-graph.txt and .svg are the command's output for the example
    project's lab app; CONTRIBUTING.md says how to regenerate them."""
    root = Path(__file__).resolve().parent.parent

    def graph(*args):
        command = [sys.executable, "manage.py", "graph_maintained_fields", "lab", *args]
        environment = {name: value for name, value in os.environ.items() if name != "DJANGO_SETTINGS_MODULE"}
        done = subprocess.run(command, cwd=root / "example", env=environment, text=True, capture_output=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert (root / "docs" / "example-graph.txt").read_text() == graph()
    assert svg_graph((root / "docs" / "example-graph.svg").read_text()) == dot_graph(graph("--format", "dot"))
