"""The module's map: the docstring's table of contents, `__all__` and the section headers agree."""

import inspect
import re
import types

import genre_utils as gu


def _defined_here(name: str) -> bool:
    """Whether `name` is defined by genre_utils itself (not an imported module, class or function)."""
    value = getattr(gu, name)
    if isinstance(value, types.ModuleType):
        return False
    module = getattr(value, "__module__", None)
    if inspect.isclass(value) or inspect.isfunction(value):
        return module == gu.__name__
    return name in _assigned_names()


def _assigned_names() -> set[str]:
    """Names bound by a top-level assignment in genre_utils.py."""
    source = inspect.getsource(gu)
    return set(re.findall(r"^([A-Za-z_]\w*)\s*(?::[^=\n]*)?=", source, flags=re.MULTILINE))


def _docstring_map() -> list[tuple[str, list[str]]]:
    """(section title, public names) per section of the module docstring's table of contents."""
    sections = []
    for line in gu.__doc__.splitlines():
        if re.match(r"^\S[^:]*: ", line):
            sections.append((line.split(":")[0], []))
        elif line.startswith("    ") and sections:
            sections[-1][1].extend(name.strip() for name in line.split(",") if name.strip())
    return sections


def test_every_public_name_defined_in_the_module_is_in_all():
    public = {name for name in vars(gu) if not name.startswith("_") and _defined_here(name)}
    assert public - set(gu.__all__) == set()


def test_every_name_in_all_exists_once():
    assert [name for name in gu.__all__ if not hasattr(gu, name)] == []
    assert len(gu.__all__) == len(set(gu.__all__))


def test_all_lists_the_names_of_the_docstring_map_in_the_same_order():
    names = [name for _, section in _docstring_map() for name in section]
    assert names == gu.__all__


def test_the_docstring_map_lists_the_sections_in_the_order_of_their_headers():
    headers = re.findall(r"^# ── ([^:]+):", inspect.getsource(gu), flags=re.MULTILINE)
    assert [title for title, _ in _docstring_map()] == headers


def test_each_public_name_is_defined_in_the_section_the_map_puts_it_in():
    source = inspect.getsource(gu).splitlines()
    section_of_line, current = [], None
    for line in source:
        match = re.match(r"^# ── ([^:]+):", line)
        current = match.group(1) if match else current
        section_of_line.append(current)
    for title, names in _docstring_map():
        for name in names:
            line = next(
                i
                for i, text in enumerate(source)
                if section_of_line[i] and re.match(rf"^(?:def {name}\(|class {name}\b|{name}\s*[:=])", text)
            )
            assert section_of_line[line] == title, name
