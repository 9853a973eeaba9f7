"""The lessons' `#@save` cells and genre_utils.py hold the same code (the convention of d2l's book: a lesson
writes a function, the library keeps it word for word), so the code a student reads is the code that runs.

Two copies agree when their syntax trees agree, leaving out what may differ without changing what runs:
docstrings, type annotations and the imports at the top of a function's body (the module imports
librosa and Keras inside its functions, so that importing it stays light; a notebook imports them once,
at its top). A constant agrees when its value does.
"""

import ast
import json

import pytest

import genre_utils as gu

NOTEBOOKS = sorted((gu.ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# what the lessons write out and the later notebooks reuse: notebook, its saved names
LESSONS = {
    "02_features": {"TOP_DB", "mel_spectrogram", "cqt"},
    "03_model": {"MODEL_BLOCKS", "branch_blocks", "conv_block", "branch", "classifier_head"},
    "04_training": {"step_decay"},
}


def saved_definitions(notebook) -> dict[str, ast.stmt]:
    """The top-level functions and constants of `notebook`'s cells that start with `#@save`, by name."""
    found = {}
    for cell in json.loads(notebook.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] != "code" or not source.startswith("#@save"):
            continue
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef):
                found[node.name] = node
            elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                found[node.targets[0].id] = node
    return found


def code_of(function: ast.FunctionDef) -> str:
    """The function's syntax tree without its docstring, annotations and leading imports."""
    body = list(function.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    while body and isinstance(body[0], ast.Import | ast.ImportFrom):
        body = body[1:]
    arguments = function.args
    for argument in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
        argument.annotation = None
    bare = ast.FunctionDef(name=function.name, args=arguments, body=body, decorator_list=[], returns=None)
    return ast.dump(bare)


def module_definition(name: str) -> ast.FunctionDef:
    tree = ast.parse((gu.ROOT / "genre_utils.py").read_text())
    return next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name)


SAVED = {(notebook.stem, name): node for notebook in NOTEBOOKS for name, node in saved_definitions(notebook).items()}


def test_each_lesson_writes_out_the_code_of_its_idea():
    for notebook, names in LESSONS.items():
        written = {name for (where, name) in SAVED if where == notebook}
        assert names <= written, f"{notebook}.ipynb: no #@save cell for {sorted(names - written)}"


@pytest.mark.parametrize("notebook, name", sorted(SAVED))
def test_saved_code_is_the_module_s(notebook, name):
    node = SAVED[notebook, name]
    assert hasattr(gu, name), f"{notebook}.ipynb saves {name}, which genre_utils.py lacks"
    if isinstance(node, ast.Assign):
        assert ast.literal_eval(node.value) == getattr(gu, name), f"{notebook}.ipynb: {name} differs from the module's"
    else:
        assert code_of(node) == code_of(module_definition(name)), (
            f"{notebook}.ipynb: {name} differs from genre_utils.py's; copy the one you changed into the other"
        )


def test_a_changed_line_is_a_difference():
    """The comparison sees a change of one argument, so the test above can fail."""
    saved = SAVED["03_model", "conv_block"]
    changed = ast.parse(ast.unparse(saved).replace("'same'", "'valid'", 1)).body[0]
    assert code_of(changed) != code_of(module_definition("conv_block"))
