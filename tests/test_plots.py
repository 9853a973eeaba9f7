"""Figures (content, labels, export) and the one-page HTML report of the notebooks."""

import base64
import io
import types

import matplotlib

matplotlib.use("Agg")

import matplotlib.image
import matplotlib.pyplot as plt
import nbformat
import numpy as np
import pandas as pd
import PIL.Image
import pytest
from matplotlib.backends.backend_pdf import pdfRepr

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


def test_confusion_matrix_heat_map_has_genre_names_and_shares(scores):
    fig = gu.plot_confusion_matrix(scores.confusion)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(gu.GENRES)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(gu.GENRES)
    assert ax.get_xlabel() == "Predicted genre" and ax.get_ylabel() == "True genre"
    assert ax.get_xticklabels()[0].get_rotation() == pytest.approx(40)
    values = ax.collections[0].get_array().reshape(len(gu.GENRES), -1)
    np.testing.assert_allclose(values, scores.confusion_normalized.to_numpy())
    annotations = [t.get_text() for t in ax.texts]
    assert len(annotations) == len(gu.GENRES) ** 2 and all(a == "" or a.endswith("%") for a in annotations)


def test_confusion_matrix_shows_counts_and_rejects_a_bad_shape():
    counts = np.array([[3, 1], [0, 2]])
    fig = gu.plot_confusion_matrix(counts, ["Rock", "Pop"], normalize=False)
    assert [t.get_text() for t in fig.axes[0].texts] == ["3", "1", "", "2"]
    with pytest.raises(gu.GenreError, match="expected \\(3, 3\\)"):
        gu.plot_confusion_matrix(counts, ["Rock", "Pop", "Folk"])


def test_genre_scores_get_three_bars_per_genre(scores):
    fig = gu.plot_genre_scores(scores.per_genre)
    ax = fig.axes[0]
    bars = [bar for container in ax.containers for bar in container]
    assert len(bars) == 3 * len(gu.GENRES)
    assert ax.get_ylim() == (0, 1.05)
    assert [t.get_text() for t in ax.get_xticklabels()][0] == "Hip-Hop\n(n=5)"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Precision", "Recall", "F1"]
    heights = sorted(bar.get_height() for bar in bars)
    np.testing.assert_allclose(heights, sorted(scores.per_genre[["precision", "recall", "f1"]].to_numpy().ravel()))


def test_comparison_draws_bars_coloured_by_dataset_and_the_reports_line(scores):
    table = gu.compare_with_report({"validation": scores}, gu.get_config("demo"), "demo-full")
    fig = gu.plot_comparison(table)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["report (validation)", "demo-full (validation)"]
    reference = [line for line in ax.get_lines() if line.get_label().startswith("report")]
    assert reference and reference[0].get_xdata()[0] == pytest.approx(0.555)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("not FMA" in text for text in legend)  # bars coloured by dataset
    assert ax.patches[0].get_width() == pytest.approx(0.555)


def test_comparison_of_a_series_draws_error_bars():
    table = pd.DataFrame({"accuracy": [0.5, 0.4], "std": [0.02, 0.03]}, index=["all branches", "no CQT"])
    fig = gu.plot_comparison(table, error="std", chance=None)
    assert [t.get_text() for t in fig.axes[0].texts] == ["0.500 ± 0.020", "0.400 ± 0.030"]
    assert len(gu.plot_comparison(table["accuracy"]).axes[0].patches) == 2
    with pytest.raises(gu.GenreError, match="no column\\(s\\) f1"):
        gu.plot_comparison(table, value="f1")


def test_plots_leave_global_style_alone(history):
    before = dict(matplotlib.rcParams)
    gu.plot_learning_curves(history)
    assert dict(matplotlib.rcParams) == before


def test_save_figure_writes_png_and_reproducible_pdf(tmp_path, history):
    fig = gu.plot_learning_curves(history)
    png, pdf = gu.save_figure(fig, "05_learning_curves", tmp_path, caption="Loss and accuracy.")
    assert (png.name, pdf.name) == ("05_learning_curves.png", "05_learning_curves.pdf")
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image[..., :3].std() > 0.05  # decodes, not blank
    first_pdf = pdf.read_bytes()
    assert first_pdf.startswith(b"%PDF") and b"CreationDate" not in first_pdf
    gu.save_figure(fig, "05_learning_curves", tmp_path, caption="Loss and accuracy.")
    assert pdf.read_bytes() == first_pdf


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
    fig, _ = plt.subplots()
    gu.save_figure(fig, "02_example", figures, caption="An empty example.")
    (figures / "notes.txt").write_text("not a figure")

    out = gu.export_report(notebooks, tmp_path / "report", figures)

    assert out == tmp_path / "report" / "index.html"
    assert sorted(p.name for p in out.parent.iterdir()) == ["figures", "index.html"]  # nothing partial left behind
    copied = sorted(p.name for p in (out.parent / "figures").iterdir())
    assert copied == ["02_example.pdf", "02_example.png", "CAPTIONS.md"]
    assert gu.figure_captions(out.parent / "figures").loc["02_example", "caption"] == "An empty example."
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


def readability_problems(fig) -> list[str]:
    """What keeps `fig` from reading on its own in a report: an axis with a label but no tick labels,
    a legend over plotted data (lines, markers, bars, bands, images, text), text outside the figure."""
    from matplotlib.collections import PathCollection, PolyCollection
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    problems, undrawn = [], set()  # tick labels of ticks outside the view keep stale positions
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
    page = fig.bbox.padded(1)  # a pixel of rounding

    def beyond(box) -> bool:
        return not (page.contains(box.x0, box.y0) and page.contains(box.x1, box.y1))

    if beyond(fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)):  # everything drawn, in pixels
        texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in undrawn]
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
    """A figure of every plot_* function of genre_utils, on inputs small enough to draw in a blink."""
    rng = np.random.default_rng(0)
    cfg = gu.get_config("demo")
    genres = list(gu.GENRES[:3])
    if name == "plot_mel_vs_cqt":
        spectrograms = {
            g: (rng.uniform(-80, 0, (cfg.n_mels, 40)), rng.uniform(-80, 0, (cfg.cqt_bins, 40))) for g in genres[:2]
        }
        return gu.plot_mel_vs_cqt(spectrograms, cfg)
    if name == "plot_band_statistics":  # bands that fill their panels, as the real ones do: no corner is free
        stats = {}
        for source, bands in (("mel", cfg.n_mels), ("cqt", cfg.cqt_bins)):
            stats[f"{source}_mean"] = -40 + 5 * np.sin(np.linspace(0, 3 * np.pi, bands))
            stats[f"{source}_std"] = np.full(bands, 15.0)
        return gu.plot_band_statistics(stats)
    if name == "plot_learning_curves":
        return gu.plot_learning_curves(history)
    if name == "plot_confusion_matrix":
        return gu.plot_confusion_matrix(scores.confusion)
    if name == "plot_genre_scores":
        return gu.plot_genre_scores(scores.per_genre)
    if name == "plot_comparison":
        table = pd.DataFrame({"accuracy": [0.62, 0.55, 0.48], "std": [0.02, 0.03, 0.01]}, index=["a", "b", "c"])
        return gu.plot_comparison(table, error="std")
    if name == "plot_cross_validation":
        methods = ["svm", "logistic", "a network with a long descriptive name that must wrap"]
        per_fold = pd.DataFrame({"method": np.repeat(methods, 5), "accuracy": rng.uniform(0.5, 0.9, 15)})
        summary = per_fold.groupby("method", sort=False)["accuracy"].agg(["mean", "sem", "min"]).reset_index()
        summary.columns = ["method", "accuracy_mean", "accuracy_se", "accuracy_min"]
        return gu.plot_cross_validation(summary, per_fold, baseline="svm", chance=0.25)
    if name == "plot_prediction_timeline":
        windows = pd.DataFrame(rng.dirichlet(np.ones(len(genres)), 6), index=np.arange(0, 30, 5.0), columns=genres)
        return gu.plot_prediction_timeline(windows.rename_axis("start_s"), title="a song")
    if name == "plot_saliency":
        data = small_features(cfg)
        maps = {b: rng.uniform(0, 1, (2, *getattr(data, gu.BRANCH_INPUTS[b]).shape[1:])) for b in gu.BRANCHES}
        return gu.plot_saliency(data, [0, 1], maps, cfg)
    if name == "plot_occlusion":
        table = pd.DataFrame(rng.uniform(-0.2, 0.5, (3, 4)), index=genres, columns=["C1", "C2", "C3", "C4"])
        return gu.plot_occlusion({"CQT octaves": table, "seconds": table})
    clips = pd.Series(np.repeat(genres, 6), index=np.arange(100, 118))
    if name == "plot_embedding_maps":
        points = pd.DataFrame(rng.normal(size=(18, 2)), index=clips.index, columns=["x", "y"])
        return gu.plot_embedding_maps({"CNN": points, "musicnn": points}, clips, wrong=clips == genres[0])
    if name == "plot_neighbour_purity":
        table = pd.DataFrame(rng.normal(size=(18, 4)), index=clips.index)
        return gu.plot_neighbour_purity({"CNN": gu.neighbour_purity(table, clips, k=3)})
    raise AssertionError(f"no small inputs for {name}: add them here")


PLOTS = [name for name in gu.__all__ if name.startswith("plot_")]


@pytest.mark.parametrize("name", PLOTS)
def test_every_plot_reads_on_its_own_and_saves_with_its_caption(name, history, scores, tmp_path, monkeypatch):
    fig = small_inputs(name, history, scores)
    assert readability_problems(fig) == []
    monkeypatch.setattr(gu, "FIGURE_DPI", 30)  # a small PNG: what is checked here is what gets written, not its pixels
    caption = f"What {name} shows, on which data, and what to read from it (± 1 standard error)."
    png, pdf = gu.save_figure(fig, f"00_{name}", tmp_path, caption=caption)
    assert PIL.Image.open(png).text["Description"] == caption
    assert b"/Subject " + pdfRepr(caption) in pdf.read_bytes()
    assert gu.figure_captions(tmp_path).loc[f"00_{name}", "caption"] == caption


def test_the_readability_check_finds_a_bare_axis_a_legend_over_data_and_text_outside():
    fig, ax = plt.subplots(figsize=(4, 3), layout="constrained")
    ax.plot(np.arange(10), np.arange(10), label="a diagonal line")
    ax.set(ylabel="note", yticks=[], xlabel="time")
    ax.legend(loc="center")
    fig.text(1.02, 0.5, "far right")
    problems = readability_problems(fig)
    assert len(problems) == 3, problems
    assert "y axis 'note' has no tick labels" in problems[0]
    assert "covers the data" in problems[1] and "far right" in problems[2]


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


def test_captions_are_replaced_by_name_and_kept_in_notebook_order(tmp_path):
    fig, _ = plt.subplots()
    for name, caption in [("05_b", "first"), ("02_a", "second"), ("05_a", "third"), ("05_b", "fourth")]:
        gu.save_figure(fig, name, tmp_path, caption=f"The {caption}\ncaption.")
    captions = gu.figure_captions(tmp_path)
    assert list(captions.index) == ["02_a", "05_b", "05_a"]  # by notebook, then in the order they were drawn
    assert list(captions["caption"]) == ["The second caption.", "The fourth caption.", "The third caption."]
    assert captions.loc["02_a", "notebook"] == "notebooks/02_features.ipynb"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".CAPTIONS.md.lock"]
    with pytest.raises(gu.GenreError, match="02_a: give it a caption"):
        gu.save_figure(fig, "02_a", tmp_path, caption=" \n")
