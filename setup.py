"""Compile the gettext catalogs (``.po`` -> ``.mo``) as part of every build, editable installs included."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

LOCALE_DIR = Path(__file__).parent / "cellmind" / "locale"


def compile_catalogs(target_root: Path) -> None:
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    for po_path in sorted(LOCALE_DIR.glob("*/LC_MESSAGES/*.po")):
        with po_path.open("rb") as po_file:
            catalog = read_po(po_file)
        mo_path = target_root / po_path.relative_to(LOCALE_DIR.parent.parent).with_suffix(".mo")
        mo_path.parent.mkdir(parents=True, exist_ok=True)
        with mo_path.open("wb") as mo_file:
            write_mo(mo_file, catalog)


class BuildPyWithCatalogs(build_py):
    def run(self):
        super().run()
        # Into the build tree for wheels, and beside the .po files for editable installs.
        compile_catalogs(Path(self.build_lib))
        if self.editable_mode:
            compile_catalogs(Path(__file__).parent)


setup(cmdclass={"build_py": BuildPyWithCatalogs})
