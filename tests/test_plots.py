"""Figures (content, labels, export) and the one-page HTML report of the notebooks."""

import base64
import functools
import io
import itertools
import re
import types

import matplotlib

matplotlib.use("Agg")

import matplotlib.container
import matplotlib.pyplot as plt
import nbformat
import numpy as np
import pandas as pd
import PIL.Image
import pytest
from matplotlib.backends.backend_pdf import pdfRepr
from matplotlib.path import Path

import genre_utils as gu


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def history():
    epochs = np.arange(6)
    return pd.DataFrame(
        {
            "epoch": epochs,
            "accuracy": [0.2, 0.4, 0.6, 0.7, 0.8, 0.9],
            "loss": [2.0, 1.5, 1.1, 0.8, 0.6, 0.4],
            "val_accuracy": [0.15, 0.3, 0.45, 0.5, 0.48, 0.47],
            "val_loss": [2.1, 1.8, 1.5, 1.4, 1.45, 1.5],
            "learning_rate": 1e-3 * 0.3 ** (epochs / 10),
        }
    )


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    y_true = np.repeat(np.arange(len(gu.GENRES)), 5)
    proba = rng.dirichlet(np.ones(len(gu.GENRES)), size=len(y_true))
    return gu.classification_scores(y_true, proba, gu.GENRES)


def line_labels(ax):
    return [line.get_label() for line in ax.get_lines()]


def test_learning_curves_show_training_and_validation_in_two_panels(history):
    fig = gu.plot_learning_curves(history)
    loss_ax, accuracy_ax = fig.axes
    assert loss_ax.get_xlabel() == accuracy_ax.get_xlabel() == "Epoch"
    assert "Loss" in loss_ax.get_title() and "Accuracy" in accuracy_ax.get_title()
    assert line_labels(accuracy_ax) == ["training", "validation", "best validation (epoch 4)"]
    np.testing.assert_array_equal(accuracy_ax.get_lines()[1].get_xdata(), np.arange(1, 7))  # 1-based epochs
    np.testing.assert_array_equal(loss_ax.get_lines()[0].get_ydata(), history["loss"])
    assert [t.get_text() for t in fig.legends[0].get_texts()][:2] == ["training", "validation"]


def test_learning_curves_work_without_validation_and_reject_bad_histories(history):
    fig = gu.plot_learning_curves(history[["loss", "accuracy"]])
    assert line_labels(fig.axes[1]) == ["training"]
    with pytest.raises(gu.GenreError, match="no column\\(s\\) accuracy"):
        gu.plot_learning_curves(history.drop(columns="accuracy"))
    with pytest.raises(gu.GenreError, match="empty"):
        gu.plot_learning_curves(history.iloc[:0])


def test_confusion_matrix_heat_map_has_genre_names_counts_and_shares(scores):
    fig = gu.plot_confusion_matrix(scores.confusion, title="Validation, run demo-full")
    ax = fig.axes[0]
    assert ax.get_title() == "Validation, run demo-full (clips, share of the row)"
    assert [t.get_text() for t in ax.get_xticklabels()] == list(gu.GENRES)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(gu.GENRES)
    assert ax.get_xlabel() == "Predicted genre" and ax.get_ylabel() == "True genre"
    assert ax.get_xticklabels()[0].get_rotation() == pytest.approx(40)
    values = ax.collections[0].get_array().reshape(len(gu.GENRES), -1)
    np.testing.assert_allclose(values, scores.confusion_normalized.to_numpy())
    annotations = [t.get_text() for t in ax.texts]
    assert len(annotations) == len(gu.GENRES) ** 2 and all(a == "" or a.endswith("%") for a in annotations)


def test_confusion_matrix_shows_counts_over_shares_and_rejects_a_bad_shape():
    counts = np.array([[3, 1], [0, 2]])
    fig = gu.plot_confusion_matrix(counts, ["Rock", "Pop"])
    assert [t.get_text() for t in fig.axes[0].texts] == ["3\n75%", "1\n25%", "", "2\n100%"]
    with pytest.raises(gu.GenreError, match="expected \\(3, 3\\)"):
        gu.plot_confusion_matrix(counts, ["Rock", "Pop", "Folk"])


def test_genre_scores_get_three_bars_per_genre_with_wilson_intervals(scores):
    fig = gu.plot_genre_scores(scores.per_genre)
    ax = fig.axes[0]
    bar_groups = [c for c in ax.containers if isinstance(c, matplotlib.container.BarContainer)]
    intervals = [c for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer)]
    bars = [bar for container in bar_groups for bar in container]
    # Wilson 95 % interval of 2 of 5, by hand: (0.4 + 1.96²/10 ± 1.96 √(0.24/5 + 1.96²/100)) / (1 + 1.96²/5)
    assert gu._wilson(2, 5) == (pytest.approx(0.1176, abs=1e-4), pytest.approx(0.7693, abs=1e-4))
    segments = intervals[1].lines[2][0].get_segments()  # recall
    for segment, genre in zip(segments, scores.per_genre.index):
        hits, n = scores.per_genre.loc[genre, "recall"] * 5, 5
        np.testing.assert_allclose(segment[:, 1], gu._wilson(hits, n), atol=1e-12)
    assert len(bars) == 3 * len(gu.GENRES)
    assert ax.get_ylim() == (0, 1.05)
    assert [t.get_text() for t in ax.get_xticklabels()][0] == "Hip-Hop\n(n=5)"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Precision", "Recall", "F1"]
    heights = sorted(bar.get_height() for bar in bars)
    np.testing.assert_allclose(heights, sorted(scores.per_genre[["precision", "recall", "f1"]].to_numpy().ravel()))


def test_comparison_draws_each_score_with_its_wilson_interval_over_its_clips(scores):
    table = gu.compare_with_report({"validation": scores, "test": scores}, gu.get_config("demo"), "demo-full")
    fig = gu.plot_comparison(table.drop("report (validation)"))  # the report's 0.555 counts other clips
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["demo-full (validation)", "demo-full (test)"]
    assert not any("report" in line.get_label() for line in ax.get_lines())
    assert ax.patches[0].get_width() == pytest.approx(scores.accuracy)
    segment = ax.containers[0].lines[2][0].get_segments()[0]  # the interval of the first bar
    np.testing.assert_allclose(segment[:, 0], gu._wilson(scores.accuracy * 40, 40), atol=1e-12)
    with pytest.raises(gu.GenreError, match="no column\\(s\\) clips"):
        gu.plot_comparison(table.drop(columns="clips"))


def test_cross_validation_draws_folds_of_equal_accuracy_apart():
    methods = ["svm", "cnn"]  # 15 folds each, ties as folds of a few dozen clips give
    per_fold = pd.DataFrame({"method": np.repeat(methods, 15), "accuracy": np.tile([0.6] * 8 + [0.7] * 7, 2)})
    summary = pd.DataFrame({"method": methods, "accuracy_mean": [0.65, 0.65], "accuracy_se": [0.01, 0.01]})
    fig = gu.plot_cross_validation(summary, per_fold)
    fig.canvas.draw()
    folds = [line for line in fig.axes[0].lines if line.get_marker() == "o"]
    dots = np.concatenate([line.get_transform().transform(line.get_xydata()) for line in folds])
    gaps = np.linalg.norm(dots[:, None] - dots[None], axis=-1)[np.triu_indices(len(dots), 1)]
    assert len(dots) == 30 and gaps.min() >= folds[0].get_markersize() * fig.dpi / 72  # a dot's diameter


def test_plots_leave_global_style_alone(history):
    before = dict(matplotlib.rcParams)
    gu.plot_learning_curves(history)
    assert dict(matplotlib.rcParams) == before


def test_save_figure_writes_png_and_reproducible_pdf(tmp_path, history):
    fig = gu.plot_learning_curves(history)
    png, pdf = gu.save_figure(fig, "05_learning_curves", tmp_path, width="text", caption="Loss and accuracy.")
    assert (png.name, pdf.name) == ("05_learning_curves.png", "05_learning_curves.pdf")
    image = PIL.Image.open(png)
    assert image.size == (7 * 300, round(fig.get_figheight() * 300))  # the printed size, 300 pixels per inch
    assert np.asarray(image)[..., :3].std() > 10  # not blank
    first_pdf = pdf.read_bytes()
    assert first_pdf.startswith(b"%PDF") and b"CreationDate" not in first_pdf
    assert b"/FontFile2" in first_pdf and b"/Type3" not in first_pdf  # TrueType fonts, embedded
    assert f"/MediaBox [ 0 0 504 {fig.get_figheight() * 72:g} ]".encode() in first_pdf  # 7 in = 504 pt wide
    gu.save_figure(fig, "05_learning_curves", tmp_path, width="text", caption="Loss and accuracy.")
    assert pdf.read_bytes() == first_pdf
    assert gu.figure_captions(tmp_path).loc["05_learning_curves", "width"] == "text"
    assert "text width (7 in)" in (tmp_path / gu.CAPTIONS_FILE).read_text()


def test_save_figure_refuses_a_figure_not_drawn_for_print(tmp_path, history):
    fig = gu.plot_learning_curves(history)
    with pytest.raises(gu.GenreError, match="drawn 7.00 x 2.80 in.*draw it 3.5 in wide \\(column\\)"):
        gu.save_figure(fig, "05_a", tmp_path, width="column", caption="Loss.")
    with pytest.raises(gu.GenreError, match="width 'page'; choose column or text"):
        gu.save_figure(fig, "05_a", tmp_path, width="page", caption="Loss.")
    fig.axes[0].set_title("tiny", fontsize=6)
    with pytest.raises(gu.GenreError, match="'tiny' \\(6.0 pt\\)"):
        gu.save_figure(fig, "05_a", tmp_path, width="text", caption="Loss.")
    assert not list(tmp_path.glob("*.p*"))


def tiny_png() -> str:
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def write_notebook(path, heading, code, outputs, executed=True):
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell(f"# {heading}\n\nSome prose."),
            nbformat.v4.new_code_cell(code, outputs=outputs, execution_count=1 if executed else None),
        ]
    )
    nbformat.write(notebook, path)


def test_export_report_merges_notebooks_into_one_page(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    png = tiny_png()
    write_notebook(
        notebooks / "01_first.ipynb",
        "The dataset",
        "# NBVAL_IGNORE_OUTPUT\nprint('alpha')",
        [nbformat.v4.new_output("stream", name="stdout", text="alpha-output\n")],
    )
    write_notebook(
        notebooks / "02_second.ipynb",
        "The results",
        "plot()",
        [nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})],
    )
    (notebooks / "scratch.ipynb").write_text("not a notebook")  # not NN_*: ignored

    figures = tmp_path / "figures"
    fig, _ = plt.subplots(figsize=(3.5, 2))
    gu.save_figure(fig, "02_example", figures, width="column", caption="An empty example: 5 % of 10_000 & {more}.")
    (figures / "notes.txt").write_text("not a figure")

    out = gu.export_report(notebooks, tmp_path / "report", figures)

    assert out == tmp_path / "report" / "index.html"
    # nothing partial left behind
    assert sorted(p.name for p in out.parent.iterdir()) == ["figures", "figures.md", "figures.tex", "index.html"]
    copied = sorted(p.name for p in (out.parent / "figures").iterdir())
    assert copied == ["02_example.pdf", "02_example.png", "CAPTIONS.md"]
    assert gu.figure_captions(out.parent / "figures").loc["02_example", "caption"].startswith("An empty example")
    latex = (out.parent / "figures.tex").read_text(encoding="utf-8")
    assert latex == (
        "\\begin{figure}[tbp]\n  \\centering\n  \\includegraphics[width=\\columnwidth]{figures/02_example.pdf}\n"
        "  \\caption{An empty example: 5 \\% of 10\\_000 \\& \\{more\\}.}\n  \\label{fig:02_example}\n\\end{figure}\n"
    )
    (figures / "02_example.png").unlink()
    gu.export_report(notebooks, tmp_path / "report", figures)  # the copy is replaced, not added to
    assert not (out.parent / "figures" / "02_example.png").exists()
    html = out.read_text(encoding="utf-8")
    assert "alpha-output" in html and "The results" in html
    assert html.index("The dataset") < html.index("The results")
    assert 'href="#part-01_first"' in html and 'id="part-02_second"' in html  # table of contents
    assert f"data:image/png;base64,{png[:60]}" in html
    assert "NBVAL_IGNORE_OUTPUT" not in html


def test_export_report_refuses_unexecuted_or_missing_notebooks(tmp_path):
    with pytest.raises(gu.GenreError, match="no notebooks"):
        gu.export_report(tmp_path, tmp_path / "report")
    write_notebook(tmp_path / "01_fresh.ipynb", "Fresh", "1 + 1", [], executed=False)
    with pytest.raises(gu.GenreError, match="01_fresh.ipynb: not executed"):
        gu.export_report(tmp_path, tmp_path / "report")
    (tmp_path / "01_fresh.ipynb").write_text("{broken")
    with pytest.raises(gu.GenreError, match="01_fresh.ipynb: not a readable notebook"):
        gu.export_report(tmp_path, tmp_path / "report")
    assert not (tmp_path / "report" / "index.html").exists()


def test_style_context_keeps_interactive_mode_switched_on_inside():
    # IPython's inline backend turns interactive mode on when a session's first figure starts it;
    # undoing that on leaving the style context would hide every later figure in a notebook.
    matplotlib.interactive(False)
    try:
        with gu._plot_style():
            matplotlib.interactive(True)
        assert matplotlib.is_interactive()
    finally:
        matplotlib.interactive(False)


# ── Readability: every plot_* function, on small inputs, reads on its own ──


def text_outline(text, renderer) -> Path:
    """The rectangle a text's glyphs fill, turned with the text, in pixels, less a pixel of rounding."""
    box, angle = text.get_window_extent(renderer), np.deg2rad(text.get_rotation())
    text.set_rotation(0)
    upright = text.get_window_extent(renderer)
    text.set_rotation(np.rad2deg(angle))
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [upright.width / 2 - 1, upright.height / 2 - 1]
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return Path(corners @ turn.T + [(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2], closed=True)


def readability_problems(fig) -> list[str]:
    """What keeps `fig` from reading on its own in a printed report: a size other than a column or text
    width (at most 9.5 in tall), text under 7 pt, two texts over each other, an axis with a label but
    no tick labels, a legend over plotted data (lines, markers, bars, bands, images, text), text outside
    the figure."""
    from matplotlib.collections import PathCollection, PolyCollection
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    problems, undrawn = [], set()  # tick labels of ticks outside the view keep stale positions
    width, height = fig.get_size_inches()
    if not any(abs(width - w) < 0.01 for w in gu.FIGURE_WIDTHS.values()) or height > gu.FIGURE_MAX_HEIGHT:
        problems.append(f"drawn {width:.2f} x {height:.2f} in: not a column or text width, or taller than a page")
    for ax in fig.axes:
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            low, high = sorted(axis.get_view_interval())
            slack = (high - low) * 1e-9  # a tick at the very edge of the view is drawn
            labels = []
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                for label in (tick.label1, tick.label2):
                    if not low - slack <= tick.get_loc() <= high + slack:
                        undrawn.add(id(label))
                    elif label.get_visible() and label.get_text().strip():
                        labels.append(label.get_text())
            if axis.get_visible() and axis.label.get_visible() and axis.label.get_text() and not labels:
                problems.append(
                    f"{ax.get_title(loc='left') or ax.get_title()!r}: {name} axis "
                    f"{axis.label.get_text()!r} has no tick labels"
                )
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    for legend in legends:
        box = legend.get_window_extent(renderer).padded(3 * fig.dpi / 72)  # touching data by 3 pt covers it
        for ax in fig.axes:
            over = Bbox.intersection(box, ax.bbox)  # the part of the legend drawn over this panel
            if over is None or over.width <= 0 or over.height <= 0:
                continue
            covered = []
            for line in ax.lines:
                path = line.get_transform().transform_path(line.get_path())
                if line.get_linestyle() not in ("None", "", " ") and path.intersects_bbox(over, filled=False):
                    covered.append(line)
                elif line.get_marker() not in (None, "None", "", " ") and over.count_contains(path.vertices):
                    covered.append(line)
            for collection in ax.collections:
                if isinstance(collection, PathCollection):  # scatter: its points
                    points = collection.get_offset_transform().transform(collection.get_offsets())
                    if over.count_contains(points):
                        covered.append(collection)
                    continue
                transform = collection.get_transform()
                filled = isinstance(collection, PolyCollection)
                if any(
                    transform.transform_path(p).intersects_bbox(over, filled=filled) for p in collection.get_paths()
                ):
                    covered.append(collection)
            for artist in [*ax.patches, *ax.images, *ax.texts]:
                extent = artist.get_window_extent(renderer)
                if np.isfinite(extent.bounds).all() and extent.overlaps(over):
                    covered.append(artist)
            if covered:
                kinds = ", ".join(type(artist).__name__ for artist in covered[:3])
                problems.append(
                    f"legend {[t.get_text() for t in legend.get_texts()]} covers the data of panel "
                    f"{ax.get_title(loc='left') or ax.get_title()!r}: {kinds}"
                )
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in undrawn]
    small = [f"{t.get_text()!r} {t.get_fontsize():.1f} pt" for t in texts if t.get_fontsize() < gu.SMALLEST_TEXT]
    if small:
        problems.append(f"text under {gu.SMALLEST_TEXT:g} pt: {small[:4]}")
    outlines = [(t, t.get_window_extent(renderer), text_outline(t, renderer)) for t in texts]
    over = [
        (a.get_text(), b.get_text())
        for (a, box_a, outline_a), (b, box_b, outline_b) in itertools.combinations(outlines, 2)
        if box_a.overlaps(box_b) and outline_a.intersects_path(outline_b, filled=True)
    ]
    if over:
        problems.append(f"texts over each other: {over[:4]}")
    page = fig.bbox.padded(1)  # a pixel of rounding

    def beyond(box) -> bool:
        return not (page.contains(box.x0, box.y0) and page.contains(box.x1, box.y1))

    if beyond(fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)):  # everything drawn, in pixels
        outside = [t.get_text() for t in texts if beyond(t.get_window_extent(renderer))]
        problems.append(f"text runs outside the figure: {outside[:4]}")
    return problems


def small_features(cfg: gu.Config, clips: int = 2, frames: int = 40):
    """What plot_saliency reads of a Features: mel and CQT arrays and an index with genres."""
    rng = np.random.default_rng(0)
    return types.SimpleNamespace(
        mel=rng.uniform(-80, 0, (clips, cfg.n_mels, frames)).astype(np.float16),
        cqt=rng.uniform(-80, 0, (clips, cfg.cqt_bins, frames)).astype(np.float16),
        index=pd.DataFrame({"genre": list(cfg.genres[:clips])}),
    )


def small_inputs(name: str, history, scores):
    """A figure of every plot_* function of genre_utils, on inputs small enough to draw in a blink but
    with the real number of genres, bands and regions, and labels as long as the notebooks give."""
    rng = np.random.default_rng(0)
    cfg = gu.get_config("demo")
    genres = list(gu.GENRES)
    if name == "plot_mel_vs_cqt":
        spectrograms = {
            g: (rng.uniform(-80, 0, (cfg.n_mels, 40)), rng.uniform(-80, 0, (cfg.cqt_bins, 40))) for g in genres[:3]
        }
        return gu.plot_mel_vs_cqt(spectrograms, cfg)
    if name == "plot_band_frequencies":
        return gu.plot_band_frequencies(cfg)
    if name == "plot_mean_spectra":
        centres = {"mel": np.geomspace(30, 11000, cfg.n_mels), "cqt": np.geomspace(32.7, 4000, cfg.cqt_bins)}
        means = {
            k: pd.DataFrame(rng.uniform(-60, -20, (8, len(c))), index=genres, columns=c) for k, c in centres.items()
        }
        return gu.plot_mean_spectra(means)
    if name == "plot_band_statistics":  # bands that fill their panels, as the real ones do: no corner is free
        stats = {}
        for source, bands in (("mel", cfg.n_mels), ("cqt", cfg.cqt_bins)):
            stats[f"{source}_mean"] = -40 + 5 * np.sin(np.linspace(0, 3 * np.pi, bands))
            stats[f"{source}_std"] = np.full(bands, 15.0)
        return gu.plot_band_statistics(stats)
    if name == "plot_filter_shapes":
        spectrograms = {"mel": rng.uniform(-80, 0, (cfg.n_mels, 300)), "cqt": rng.uniform(-80, 0, (cfg.cqt_bins, 300))}
        kernels = {"mel_vertical": (32, 1), "mel_horizontal": (1, 8), "cqt": (12, 1)}
        return gu.plot_filter_shapes(spectrograms, kernels, title="track 123456 (International): ")
    if name == "plot_learning_curves":
        return gu.plot_learning_curves(history)
    if name == "plot_confusion_matrix":
        return gu.plot_confusion_matrix(scores.confusion * 13, title="Validation split, run demo-full-2026")
    if name == "plot_genre_scores":
        return gu.plot_genre_scores(scores.per_genre)
    if name == "plot_comparison":
        labels = ["all three branches", "without the CQT branch", "SVM on clip statistics", "logistic regression"]
        table = pd.DataFrame({"test_accuracy": [0.62, 0.55, 0.48, 0.3], "clips": 80}, index=labels)
        return gu.plot_comparison(table, value="test_accuracy")
    if name == "plot_cross_validation":
        methods = ["svm", "logistic", "a network with a long descriptive name that must wrap", "musicnn"]
        per_fold = pd.DataFrame({"method": np.repeat(methods, 10), "accuracy": rng.uniform(0.5, 0.9, 40)})
        summary = per_fold.groupby("method", sort=False)["accuracy"].agg(["mean", "sem", "min"]).reset_index()
        summary.columns = ["method", "accuracy_mean", "accuracy_se", "accuracy_min"]
        return gu.plot_cross_validation(summary, per_fold, baseline="svm", chance=0.125)
    if name == "plot_prediction_timeline":
        windows = pd.DataFrame(rng.dirichlet(np.ones(8), 19), index=np.arange(0, 28.5, 1.5), columns=genres)
        windows.attrs["window_s"] = 3.0
        return gu.plot_prediction_timeline(windows.rename_axis("start_s"), "medley.wav: Rock → Pop → Folk", (10, 20))
    if name == "plot_saliency":
        data = small_features(cfg, clips=4)
        maps = {b: rng.uniform(0, 1, (4, *getattr(data, gu.BRANCH_INPUTS[b]).shape[1:])) for b in gu.BRANCHES}
        titles = ["WRONG: Experimental heard as International (93%)", "right: Hip-Hop (88%)", "Pop", "Rock"]
        return gu.plot_saliency(data, [0, 1, 2, 3], maps, cfg, titles=titles)
    if name == "plot_occlusion":
        tables = {kind: gu.occlusion_regions(cfg, kind).index for kind in ("mel", "cqt")}
        tables = {
            k: pd.DataFrame(rng.uniform(-0.2, 0.5, (8, len(c))), index=genres, columns=c) for k, c in tables.items()
        }
        return gu.plot_occlusion({"mel bands": tables["mel"], "CQT octaves": tables["cqt"]})
    clips = pd.Series(np.repeat(genres, 6), index=np.arange(100, 148))
    if name == "plot_embedding_maps":
        points = pd.DataFrame(rng.normal(size=(48, 2)), index=clips.index, columns=["x", "y"])
        notes = {"report's CNN, before its dense layer": "neighbour purity 0.45 (chance 0.12)"}
        maps = {"report's CNN, before its dense layer": points, "musicnn (pretrained on the MSD, frozen)": points}
        return gu.plot_embedding_maps(maps, clips, wrong=clips == genres[0], notes=notes)
    if name == "plot_neighbour_purity":
        table = pd.DataFrame(rng.normal(size=(48, 4)), index=clips.index)
        purity = gu.neighbour_purity(table, clips, k=3)
        return gu.plot_neighbour_purity({"report's CNN": purity, "musicnn (frozen)": purity})
    raise AssertionError(f"no small inputs for {name}: add them here")


PLOTS = [name for name in gu.__all__ if name.startswith("plot_")]


@pytest.mark.parametrize("name", PLOTS)
def test_every_plot_reads_on_its_own_and_saves_with_its_caption(name, history, scores, tmp_path, monkeypatch):
    fig = small_inputs(name, history, scores)
    assert readability_problems(fig) == []
    monkeypatch.setattr(gu, "FIGURE_DPI", 30)  # a small PNG: what is checked here is what gets written, not its pixels
    caption = f"What {name} shows, on which data, and what to read from it (± 1 standard error)."
    width = next(key for key, inches in gu.FIGURE_WIDTHS.items() if abs(inches - fig.get_figwidth()) < 0.01)
    png, pdf = gu.save_figure(fig, f"00_{name}", tmp_path, width=width, caption=caption)
    assert PIL.Image.open(png).text["Description"] == caption
    assert b"/Subject " + pdfRepr(caption) in pdf.read_bytes()
    assert gu.figure_captions(tmp_path).loc[f"00_{name}", "caption"] == caption


def test_the_readability_check_finds_every_kind_of_problem():
    fig, ax = plt.subplots(figsize=(4, 3), layout="constrained")
    ax.plot(np.arange(10), np.arange(10), label="a diagonal line")
    ax.set(ylabel="note", yticks=[], xlabel="time")
    ax.legend(loc="center")
    fig.text(1.02, 0.5, "far right")
    ax.text(2, 8, "tiny", fontsize=6)
    ax.text(5, 2, "first label", rotation=40)
    ax.text(5.2, 2.1, "second label", rotation=40)
    ax.text(6, 5, "clear of the rest", rotation=40)  # its upright box would overlap "first label"'s: its glyphs do not
    problems = readability_problems(fig)
    assert len(problems) == 6, problems
    assert "drawn 4.00 x 3.00 in" in problems[0]
    assert "y axis 'note' has no tick labels" in problems[1]
    assert "covers the data" in problems[2]
    assert "'tiny' 6.0 pt" in problems[3]
    assert "texts over each other: [('first label', 'second label')]" in problems[4]
    assert "far right" in problems[5]


def test_every_committed_figure_has_a_caption_and_every_caption_a_figure():
    figures = gu.ROOT / "figures"
    png, pdf = ({path.stem for path in figures.glob(f"*.{suffix}")} for suffix in ("png", "pdf"))
    assert png == pdf, f"figures/ has a PNG without its PDF or the reverse: {sorted(png ^ pdf)}"
    captions = gu.figure_captions(figures)
    assert sorted(png - set(captions.index)) == [], "figures without a caption in figures/CAPTIONS.md (make demo)"
    assert sorted(set(captions.index) - png) == [], "captions in figures/CAPTIONS.md of no figure in figures/"
    assert captions["caption"].str.len().gt(20).all(), captions["caption"]
    assert all((gu.ROOT / notebook).is_file() for notebook in captions["notebook"]), captions["notebook"]
    assert captions["notebook"].is_monotonic_increasing, "CAPTIONS.md lists the figures in notebook order"
    assert captions["width"].isin(list(gu.FIGURE_WIDTHS)).all(), "figures without a printed width (make demo)"
    for name, width in captions["width"].items():  # the files at their printed size: PDF in points, PNG in pixels
        box = re.search(rb"/MediaBox \[ ?0 0 ([\d.]+) ([\d.]+) ?\]", (figures / f"{name}.pdf").read_bytes())
        inches = [float(side) / 72 for side in box.groups()]
        assert abs(inches[0] - gu.FIGURE_WIDTHS[width]) < 0.01 and inches[1] <= gu.FIGURE_MAX_HEIGHT, (name, inches)
        assert PIL.Image.open(figures / f"{name}.png").size[0] >= 290 * inches[0], name


def test_every_committed_figure_is_in_the_latex_and_markdown_pack_with_its_caption(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_notebook(notebooks / "01_first.ipynb", "The dataset", "1 + 1", [])
    out = gu.export_report(notebooks, tmp_path / "report", gu.ROOT / "figures").parent
    latex, markdown = ((out / f"figures.{suffix}").read_text(encoding="utf-8") for suffix in ("tex", "md"))
    captions = gu.figure_captions(gu.ROOT / "figures")
    assert latex.count("\\begin{figure") == len(captions) == markdown.count("](figures/")
    for name, width, caption in captions[["width", "caption"]].itertuples():
        entry = latex[latex.index(f"{{figures/{name}.pdf}}") :]
        assert entry.startswith(f"{{figures/{name}.pdf}}\n  \\caption{{")
        assert f"\\label{{fig:{name}}}" in entry[: entry.index("\\end{figure")]
        assert latex[: latex.index(f"{{figures/{name}.pdf}}")].endswith(f"width=\\{width or 'text'}width]")
        assert (out / "figures" / f"{name}.pdf").is_file() and (out / "figures" / f"{name}.png").is_file()
        assert f"![{name}](figures/{name}.png)" in markdown and caption in markdown
        text = entry[entry.index("\\caption{") + len("\\caption{") : entry.index("}\n  \\label")]
        text = re.sub(r"\\([&%$#_{}])", r"\1", text)  # caption text survives LaTeX escaping
        assert functools.reduce(lambda t, symbol: t.replace(*symbol[::-1]), gu._LATEX_SYMBOLS.items(), text) == caption


def test_captions_are_replaced_by_name_and_kept_in_notebook_order(tmp_path):
    fig, _ = plt.subplots(figsize=(7, 2))
    for name, caption in [("05_b", "first"), ("02_a", "second"), ("05_a", "third"), ("05_b", "fourth")]:
        gu.save_figure(fig, name, tmp_path, width="text", caption=f"The {caption}\ncaption.")
    captions = gu.figure_captions(tmp_path)
    assert list(captions.index) == ["02_a", "05_b", "05_a"]  # by notebook, then in the order they were drawn
    assert list(captions["caption"]) == ["The second caption.", "The fourth caption.", "The third caption."]
    assert captions.loc["02_a", "notebook"] == "notebooks/02_features.ipynb"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".CAPTIONS.md.lock"]
    with pytest.raises(gu.GenreError, match="02_a: give it a caption"):
        gu.save_figure(fig, "02_a", tmp_path, width="text", caption=" \n")
