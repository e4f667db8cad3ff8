"""The docker's history strip: the newest finished jobs' thumbnails, each with its actions.

Widgets only.  The cards (loop.HistoryCard) come from the controller, which asks the
daemon in a thread (`history`, PROTOCOL.md 5.11) after each finished job and on connect;
what an action does is the panel's and the controller's business (`on_action`).
"""

from __future__ import annotations

from collections.abc import Callable

from PyQt5.QtCore import QPoint, QSize, Qt
from PyQt5.QtGui import QColor, QFont, QIcon, QImage, QPainter, QPixmap
from PyQt5.QtWidgets import QFrame, QHBoxLayout, QLabel, QMenu, QScrollArea, QToolButton, QWidget

from .loop import HistoryCard

#: The thumbnails' side in the strip (the daemon's are up to 128 px).
ICON_SIDE = 56

_TOP_RIGHT = int(Qt.AlignTop | Qt.AlignRight)

#: (action id, menu text) of each thumbnail's menu; "star" reads "Unstar" on a starred entry.
ACTIONS = (("apply", "Apply as layer"), ("vary", "Vary (subtle)"), ("copy", "Copy settings"), ("star", "Star"))


def thumbnail_pixmap(card: HistoryCard, side: int = ICON_SIDE) -> QPixmap:
    """The entry's first thumbnail (RGBA bytes) fitted into a `side` square, a star in its
    corner when the entry is starred."""
    canvas = QPixmap(side, side)
    canvas.fill(QColor(0, 0, 0, 0))
    painter = QPainter(canvas)
    if card.has_thumbnail:
        w, h = card.thumb_size
        image = QImage(card.thumbnail, w, h, w * 4, QImage.Format_RGBA8888).copy()  # copy: own the bytes
        scaled = QPixmap.fromImage(image).scaled(side, side, Qt.KeepAspectRatio, Qt.SmoothTransformation)
        painter.drawPixmap(QPoint((side - scaled.width()) // 2, (side - scaled.height()) // 2), scaled)
    else:
        painter.fillRect(0, 0, side, side, QColor(90, 90, 90))
    if card.starred:
        font = QFont()
        font.setPixelSize(side // 3)
        painter.setFont(font)
        painter.setPen(QColor(20, 20, 20))
        painter.drawText(canvas.rect().adjusted(0, 1, -1, 0), _TOP_RIGHT, "★")
        painter.setPen(QColor(255, 205, 40))
        painter.drawText(canvas.rect().adjusted(0, 0, -2, 0), _TOP_RIGHT, "★")
    painter.end()
    return canvas


class HistoryStrip(QWidget):
    """A scrollable row of history thumbnails; clicking one opens its menu (ACTIONS)."""

    def __init__(self, on_action: Callable[[str, HistoryCard], None], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._on_action = on_action
        self.cards: list[HistoryCard] = []
        self.buttons: list[QToolButton] = []
        #: What the strip says about the history ("History", how many, or why there is none).
        self.status = "History"
        self.title = QLabel("History")
        self.title.setAlignment(Qt.AlignLeft | Qt.AlignTop)
        inner = QWidget()
        self._row = QHBoxLayout(inner)
        self._row.setContentsMargins(0, 0, 0, 0)
        self._row.setSpacing(2)
        self._empty = QLabel("No finished jobs yet.")
        self._empty.setWordWrap(True)
        self._row.addWidget(self._empty, 1)
        self._row.addStretch(1)
        self.area = QScrollArea()
        self.area.setWidget(inner)
        self.area.setWidgetResizable(True)
        self.area.setFrameShape(QFrame.NoFrame)
        self.area.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.area.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)
        self.area.setFixedHeight(ICON_SIDE + 10 + self.area.horizontalScrollBar().sizeHint().height())
        layout = QHBoxLayout(self)  # the title beside the thumbnails: the docker is tall enough already
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.title)
        layout.addWidget(self.area, 1)
        self._tip()

    def _tip(self) -> None:
        self.title.setToolTip(f"{self.status}\nThe daemon's newest finished jobs (kept across restarts). Click a "
                              "thumbnail: Apply as layer, Vary, Copy settings, Star.")

    def show_cards(self, cards: list[HistoryCard], status: str = "History") -> None:
        for button in self.buttons:
            self._row.removeWidget(button)
            button.deleteLater()
        self.buttons = []
        self.cards = list(cards)
        self.status = status
        self._tip()
        self._empty.setText(status if status != "History" else "No finished jobs yet.")
        self._empty.setVisible(not self.cards)
        for i, card in enumerate(self.cards):
            button = QToolButton()
            button.setIcon(QIcon(thumbnail_pixmap(card)))
            button.setIconSize(QSize(ICON_SIDE, ICON_SIDE))
            button.setToolTip(card.tooltip())
            button.setAutoRaise(True)
            button.setPopupMode(QToolButton.InstantPopup)
            menu = QMenu(button)
            for action, text in ACTIONS:
                if action == "star" and card.starred:
                    text = "Unstar"
                item = menu.addAction(text)
                item.setData(action)
                item.triggered.connect(lambda _checked=False, a=action, c=card: self._on_action(a, c))
                if action in ("apply", "vary") and not card.pixels_kept:
                    item.setEnabled(False)
            button.setMenu(menu)
            self._row.insertWidget(i, button)
            self.buttons.append(button)

    def trigger(self, index: int, action: str) -> None:
        """Run one of card `index`'s actions, as its menu does (for scripts and tests)."""
        menu = self.buttons[index].menu()
        item = next(a for a in menu.actions() if a.data() == action)
        item.trigger()
