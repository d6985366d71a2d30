"""From a number's ink map to pieces that should each hold one digit.

Approach A (``digit_groups`` then ``cut_candidates``): connected components of the
marked ink, counted and refused over a limit before anything else is done with them;
specks dropped; then merged where handwriting breaks a digit (a fragment stacked over or
under a bigger piece: a 5's hat, a 4 in two strokes, a faint gap; a small fragment close
to a bigger one). Pieces that may hold several touching digits are cut by the reader,
which scores the candidate cuts found here (top-to-bottom paths through the least
ink) with the model. Approach B (``projection_groups``), the naive baseline: runs of columns holding
ink, no merging, no cutting.

All coordinates are in the ink map's pixels (``preprocess.ink_map`` works on the image
reduced to ``WORK_SIDE``); the reader scales them back to the uploaded image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from digitrec.errors import BlankImage, TooManyComponents
from digitrec.preprocess import MARK_LEVEL, MIN_INK_PIXELS, _dilate3

EIGHT_NEIGHBOURS = np.ones((3, 3), bool)  # diagonal pixels join a stroke too
SPECK_SHARE = 0.02  # components under this share of the largest one's area are specks
FRAGMENT_HEIGHT = 0.8  # shorter than this (digit heights): may be part of a digit
# A fragment overlapping this share of the narrower width joins (or any share, when
# they are at most NEAR_GAP apart vertically)...
STACK_OVERLAP = 0.5
MAX_DIGIT_HEIGHT = 1.4  # ...unless the joined piece would be taller than this (heights)
SMALL_FRAGMENT = 0.35  # both sides under this (digit heights): a small fragment (a hat)...
FLAT_HEIGHT, FLAT_WIDTH = 0.25, 0.6  # ...or a flat stroke this high and wide (a 5's hat)...
NEAR_GAP = 0.15  # ...which joins a bigger piece at most this far away (digit heights)
BESIDE_HEIGHT = 0.7  # a fragment this short within a taller piece's rows...
BESIDE_GAP = 0.06  # ...at most this far beside it joins it (far closer than digits are)
JOINED_WIDTH = 1.6  # pieces are never joined wider than this (a 5 with a long hat)
BRIDGE = 0.12  # gaps up to this high (digit heights) are closed in joined pieces
MAX_DIGIT_WIDTH = 1.3  # no candidate digit is wider than this (digit heights)
MIN_DIGIT_WIDTH = 0.08  # ...nor narrower (a thin 1)
CUT_MARGIN = 0.12  # candidate cuts keep this far from a piece's ends (digit heights)
CUT_SPACING = 0.12  # ...and from each other
CUTS_PER_DIGIT = 3  # candidate cuts per digit height of a piece's width...
MAX_CUTS = 24  # ...and at most this many; each pairs with the few within MAX_DIGIT_WIDTH
SEAM_STEP = 1.5  # a cut path stepping one column aside costs this share of an ink pixel
CHAIN_WIDTH = 1.25  # pieces that together are this wide (digit heights) form a chain...
CHAIN_OVERLAP = 0.25  # ...when they share this share of the narrower one's columns


@dataclass(frozen=True)
class Group:
    """Components read as one piece: their labels and box (rows top:bottom, columns
    left:right, ink-map pixels)."""

    labels: frozenset[int]
    top: int
    bottom: int
    left: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    def join(self, other: Group) -> Group:
        return Group(
            self.labels | other.labels,
            min(self.top, other.top),
            max(self.bottom, other.bottom),
            min(self.left, other.left),
            max(self.right, other.right),
        )

    def overlap_x(self, other: Group) -> int:
        return min(self.right, other.right) - max(self.left, other.left)

    def distance(self, other: Group) -> int:
        """The larger of the horizontal and vertical gaps between the boxes (0: touch)."""
        gap_x = max(self.left, other.left) - min(self.right, other.right)
        gap_y = max(self.top, other.top) - min(self.bottom, other.bottom)
        return max(0, gap_x, gap_y)


@dataclass(frozen=True)
class Components:
    """The labelled ink of one image."""

    ink: np.ndarray  # the ink map (float, ink 1)
    labels: np.ndarray  # label of each marked pixel, 0 for paper
    groups: list[Group]  # one per component kept (specks dropped)
    digit_height: float  # the typical height of a digit, pixels


def label_ink(ink: np.ndarray, max_components: int) -> Components:
    """Connected components of the marked ink. More than ``max_components`` of at least
    ``MIN_INK_PIXELS`` pixels: ``TooManyComponents``, counted in whole-array passes
    before any per-component work. None: ``BlankImage``."""
    labels, count = ndimage.label(ink > MARK_LEVEL, structure=EIGHT_NEIGHBOURS)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    marks = int(np.count_nonzero(areas >= MIN_INK_PIXELS))
    if marks > max_components:
        raise TooManyComponents(
            f"the image holds {marks} separate marks; a number has at most "
            f"{max_components} (is it a page of text or a noisy photo?)"
        )
    if marks == 0:
        raise BlankImage("the image looks blank: too little ink to read a number")
    keep = areas >= max(MIN_INK_PIXELS, SPECK_SHARE * areas.max())
    groups = [
        Group(frozenset({i + 1}), rows.start, rows.stop, cols.start, cols.stop)
        for i, (rows, cols) in enumerate(ndimage.find_objects(labels))
        if keep[i]
    ]
    return Components(ink, labels, groups, _digit_height(groups))


def _digit_height(groups: list[Group]) -> float:
    """The tallest column of marks: each mark with those stacked over or under it
    (sharing most of the narrower one's columns). Fragments of broken digits would pull
    a median down, and a digit broken in two is no taller than its pieces together."""
    top = np.array([g.top for g in groups])
    bottom = np.array([g.bottom for g in groups])
    left = np.array([g.left for g in groups])
    right = np.array([g.right for g in groups])
    shared = np.minimum(right[:, None], right) - np.maximum(left[:, None], left)
    narrower = np.minimum((right - left)[:, None], right - left)
    stacked = shared >= STACK_OVERLAP * narrower  # each mark is stacked with itself
    tops = np.where(stacked, top[None, :], top.max()).min(1)
    bottoms = np.where(stacked, bottom[None, :], bottom.min()).max(1)
    return float((bottoms - tops).max())


def digit_groups(comps: Components) -> list[Group]:
    """Approach A: the components, with the fragments of broken digits joined, left to
    right."""
    groups = list(comps.groups)
    height = comps.digit_height
    while True:
        best: tuple[float, int, int] | None = None  # (-affinity, fragment, partner)
        for i, frag in enumerate(groups):
            if frag.height >= FRAGMENT_HEIGHT * height:
                continue
            for j, other in enumerate(groups):
                if j == i:
                    continue
                affinity = _affinity(frag, other, height)
                if affinity > 0 and (best is None or -affinity < best[0]):
                    best = (-affinity, i, j)
        if best is None:
            return sorted(groups, key=lambda g: (g.left, g.top))
        _, i, j = best
        joined = groups[i].join(groups[j])
        groups = [g for k, g in enumerate(groups) if k not in (i, j)] + [joined]


def chain_groups(comps: Components) -> list[Group]:
    """``digit_groups``, then pieces sharing columns joined into chains of touching
    digits however wide (a broken digit's parts held by different neighbours, or one
    sticking out past a chain's end): for the sequence reader, which reads a chain
    whole and would read such a part twice. Two pieces join when one shares at least
    ``CHAIN_OVERLAP`` of the narrower's columns, they are at most ``NEAR_GAP`` apart
    and together at least ``CHAIN_WIDTH`` wide (narrower: ``digit_groups`` decided)."""
    groups = digit_groups(comps)
    height = comps.digit_height
    while pair := _chained_pair(groups, height):
        a, b = pair
        groups = [g for g in groups if g is not a and g is not b] + [a.join(b)]
    return sorted(groups, key=lambda g: (g.left, g.top))


def _chained_pair(groups: list[Group], height: float) -> tuple[Group, Group] | None:
    for i, a in enumerate(groups):
        for b in groups[i + 1 :]:
            shared = a.overlap_x(b) >= CHAIN_OVERLAP * min(a.width, b.width)
            wide = a.join(b).width >= CHAIN_WIDTH * height
            if shared and wide and a.distance(b) <= NEAR_GAP * height:
                return a, b
    return None


def _affinity(frag: Group, other: Group, height: float) -> float:
    """How strongly ``frag`` belongs with ``other`` (0: not at all): stacked over or
    under it (the share of the narrower width they share); short, within its rows and
    all but touching it; or, for a small fragment, close to it (1 at contact, falling
    to 0 at ``NEAR_GAP``)."""
    joined = frag.join(other)
    widest = max(JOINED_WIDTH * height, other.width)  # a fragment within touching digits
    if joined.height > MAX_DIGIT_HEIGHT * height or joined.width > widest:
        return 0.0
    shared = frag.overlap_x(other) / max(1, min(frag.width, other.width))
    gap_y = max(0, max(frag.top, other.top) - min(frag.bottom, other.bottom))
    if shared >= STACK_OVERLAP or (shared > 0 and gap_y <= NEAR_GAP * height):
        return 1.0 + shared  # stacking is the stronger evidence
    gap_x = max(frag.left, other.left) - min(frag.right, other.right)
    inside = frag.top >= other.top - NEAR_GAP * height and frag.bottom <= other.bottom
    if frag.height < BESIDE_HEIGHT * height and inside and gap_x <= BESIDE_GAP * height:
        return 1.0 - gap_x / (BESIDE_GAP * height)  # a 4's corner beside its stroke
    small = max(frag.height, frag.width) < SMALL_FRAGMENT * height or (
        frag.height < FLAT_HEIGHT * height and frag.width < FLAT_WIDTH * height
    )
    if small and other.width * other.height > frag.width * frag.height:
        reach = NEAR_GAP * height
        return max(0.0, 1.0 - frag.distance(other) / reach) if reach else 0.0
    return 0.0


def projection_groups(comps: Components) -> list[Group]:
    """Approach B, the naive baseline: one piece per run of columns holding ink."""
    marked = np.isin(comps.labels, [label for g in comps.groups for label in g.labels])
    columns = marked.any(0)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], columns.astype(np.int8), [0]))))
    out = []
    for left, right in zip(edges[::2], edges[1::2], strict=True):
        rows = np.flatnonzero(marked[:, left:right].any(1))
        labels = np.unique(comps.labels[rows[0] : rows[-1] + 1, left:right])
        out.append(
            Group(
                frozenset(int(v) for v in labels if v), int(rows[0]), int(rows[-1]) + 1, left, right
            )
        )
    return out


def group_ink(
    comps: Components, group: Group, left: int = 0, right: int | None = None
) -> np.ndarray:
    """The ink of ``group`` in its box (columns ``left:right`` of it), other groups' ink
    removed; faint edge pixels next to its strokes are kept."""
    box = (slice(group.top, group.bottom), slice(group.left, group.right))
    labels = comps.labels[box]
    own = np.isin(labels, list(group.labels))
    near = _dilate3(own) & ((labels == 0) | own)  # EIGHT_NEIGHBOURS, in OpenCV
    ink = np.where(near, comps.ink[box], 0).astype(np.float32)
    if len(group.labels) > 1 and group.width <= MAX_DIGIT_WIDTH * comps.digit_height:
        # A digit joined from pieces: bridge the gaps between them (a faint band, a
        # lifted pen) as MNIST's unbroken strokes, by a vertical grey closing.
        reach = max(3, round(BRIDGE * comps.digit_height))
        ink = ndimage.grey_closing(ink, size=(reach, 1), mode="constant", cval=0.0)
    return ink[:, left:right]


def cut_candidates(ink: np.ndarray, height: float) -> list[np.ndarray]:
    """Paths from top to bottom along which touching digits may be parted: for each
    row, the column where the cut passes (int array, one per row), left to right.

    Every path is the seam through the least ink that ends at its bottom column (a
    dynamic programme over the rows, each step one column aside at most and costing
    ``SEAM_STEP`` of an ink pixel, so the seam bends round a slanted neighbour but not
    through a loop); the seams through least ink are kept, spaced apart and away from
    the ends: ``CUTS_PER_DIGIT`` per digit height of width, ``MAX_CUTS`` at most.
    """
    marked = (ink > MARK_LEVEL).astype(np.float32)
    rows, width = marked.shape
    margin = max(1, round(CUT_MARGIN * height))
    spacing = max(1, round(CUT_SPACING * height))
    if width <= 2 * margin:
        return []
    cost = marked[0].copy()
    steps = np.zeros((rows, width), np.int8)  # the previous row's column, relative
    side = np.full(1, np.inf, np.float32)
    for y in range(1, rows):
        options = np.stack(
            [
                np.concatenate((side, cost[:-1])) + SEAM_STEP,
                cost,
                np.concatenate((cost[1:], side)) + SEAM_STEP,
            ]
        )
        choice = options.argmin(0)
        steps[y] = choice - 1
        cost = marked[y] + options[choice, np.arange(width)]
    inner = np.arange(margin, width - margin)
    minima = inner[(cost[inner] <= cost[inner - 1]) & (cost[inner] <= cost[inner + 1])]
    most = min(MAX_CUTS, math.ceil(CUTS_PER_DIGIT * width / height))
    ends: list[int] = []
    for column in minima[np.argsort(cost[minima], kind="stable")]:
        if all(abs(int(column) - c) >= spacing for c in ends):
            ends.append(int(column))
            if len(ends) == most:
                break
    return sorted((_trace(steps, end) for end in ends), key=lambda path: float(path.mean()))


def _trace(steps: np.ndarray, end: int) -> np.ndarray:
    path = np.empty(len(steps), np.int64)
    x = end
    for y in range(len(steps) - 1, -1, -1):
        path[y] = x
        x += int(steps[y, x])
    return path
