"""The cellclass docks fit a 1920x1080 screen: alone, stacked from the Plugins menu, or as tabs in ``gui``."""
from __future__ import annotations

from napari_cellclass._widgets.napari_private import main_window

from .conftest import write_project

PLUGIN = "napari-cellclass"
DOCKS = ("Labelling", "Training", "Predictions", "Metrics")
SCREEN_HEIGHT = 1080
#: What a 1080-pixel screen leaves a window after a window manager's title bar and a panel.
ROOM = SCREEN_HEIGHT - 80


def _docks(viewer) -> dict:
    return {k.split(" ")[0]: d for k, d in viewer.window._wrapped_dock_widgets.items()}


def test_four_docks_from_the_plugins_menu_keep_the_window_within_the_screen(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer(show=True)
    window = main_window(viewer)
    widgets = {}
    for name in DOCKS:
        dock, widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        qtbot.wait(10)
        assert dock.minimumSizeHint().height() <= 250, name  # stacked docks share the height
    assert window.minimumSizeHint().height() <= ROOM  # was 2866 px: the window grew off screen
    assert window.geometry().height() <= SCREEN_HEIGHT
    for name, dock in _docks(viewer).items():
        if name not in DOCKS:
            continue
        scroll = dock.findChild(QScrollArea)
        assert scroll is not None, name  # a short dock scrolls: no control is out of reach
        content = scroll.widget()
        assert dock.minimumSizeHint().width() >= content.minimumSizeHint().width(), name  # none cut off
    assert scroll.widget().isAncestorOf(widgets["Metrics"].export_button.native)
    labelling = widgets["Labelling"]
    assert labelling.native.findChild(QScrollArea).widget().isAncestorOf(labelling.clear_button.native)


def test_tables_show_a_useful_number_of_rows(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    predictions = viewer.window.add_plugin_dock_widget(PLUGIN, "Predictions")[1]
    metrics = viewer.window.add_plugin_dock_widget(PLUGIN, "Metrics")[1]
    for table, rows in ((predictions.table, 8), (metrics.table, 5), (metrics.confusion, 5)):
        qt = table.native
        header, row = qt.horizontalHeader().sizeHint().height(), qt.verticalHeader().defaultSectionSize()
        assert qt.minimumHeight() >= header + rows * row


def test_gui_opens_the_docks_as_tabs_with_labelling_in_front(make_napari_viewer, tmp_path, qtbot):
    """What ``napari-cellclass gui`` (``open_viewer``) does to its new viewer."""
    from napari_cellclass._widgets.launch import dock_all

    write_project(tmp_path / "p", n=4)
    viewer = make_napari_viewer(show=True)
    dock_all(viewer, tmp_path / "p")
    window = main_window(viewer)
    docks = _docks(viewer)
    labelling = docks["Labelling"]
    others = [docks[name] for name in DOCKS[1:]]
    assert set(others) <= set(window.tabifiedDockWidgets(labelling))  # one dock area, four tabs
    qtbot.waitUntil(lambda: not labelling.visibleRegion().isEmpty())
    assert all(dock.visibleRegion().isEmpty() for dock in others)  # Labelling is the tab in front
    assert labelling.inner_widget().project is not None
    gallery = docks["Gallery"]  # beside the canvas, under the tabs, never a hidden tab
    assert gallery not in window.tabifiedDockWidgets(labelling)
    qtbot.waitUntil(lambda: not gallery.visibleRegion().isEmpty())
    from napari_cellclass._widgets.gallery import MIN_VIEW_HEIGHT
    from napari_cellclass._widgets.session import session_for

    view = session_for(viewer).gallery.view
    assert view.height() >= MIN_VIEW_HEIGHT and session_for(viewer).gallery.model.ids  # two rows of the project
    assert window.minimumSizeHint().height() <= ROOM
    assert window.geometry().height() <= SCREEN_HEIGHT


def test_gui_shrinks_a_window_taller_than_the_screen(make_napari_viewer, qtbot):
    """napari restores the window's last size: one saved 2866 px tall is brought back on screen."""
    from qtpy.QtWidgets import QApplication

    from napari_cellclass._widgets.launch import fit_to_screen

    viewer = make_napari_viewer(show=True)
    window = main_window(viewer)
    window.resize(1089, 2866)
    qtbot.wait(10)
    fit_to_screen(viewer)
    qtbot.wait(10)
    room = (window.screen() or QApplication.primaryScreen()).availableGeometry()
    assert window.frameGeometry().height() <= room.height()
    assert room.contains(window.frameGeometry().topLeft())
    assert window.geometry().width() == 1089
