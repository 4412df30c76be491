"""`ramer view` on a long conversation: the page draws the grid's first segments and the rest as
they are reached (scrolled to, or asked for), so a transcript of thousands of utterances opens at
once; in Chromium through Playwright, as `test_view.py` (skipped, with the reason, without it)."""

from __future__ import annotations

from conftest import random_store
from test_conversations import write_table
from test_view import browser, open_page, records_for  # noqa: F401 (browser: a fixture)

from ramer.data import DataBundle
from ramer.data.conversations import import_conversations, label_codes
from ramer.data.store import load_native
from ramer.view import page_data, render_page

PERSONS = ("ann", "bob", "cat")
UTTERANCES = 450  # more than the page draws at once (SEGMENTS_AT_ONCE, 200)


def long_page(tmp_path):
    """One imported conversation of UTTERANCES turns among PERSONS, as a page."""
    rows = [
        {
            "conversation": "meeting",
            "index": u,
            "speaker": PERSONS[u % 3],
            "text": f"turn {u}",
            "present": ";".join(p for p in PERSONS if p != PERSONS[u % 3]),
            "labels": ("joy", "anger", "neutral")[u % 3],
            "split": "test",
        }
        for u in range(UTTERANCES)
    ]
    import_conversations(write_table(tmp_path / "talk.csv", rows), tmp_path / "ds", context=1)
    bundle = load_native(tmp_path / "ds")
    html = tmp_path / "long.html"
    html.write_text(render_page(page_data(bundle, "test", records_for(bundle.splits["test"]), 0.5)))
    return html


def test_a_long_conversation_draws_its_grid_as_it_is_reached(browser, tmp_path, fake_text):  # noqa: F811
    page, errors = open_page(browser, long_page(tmp_path))
    cells = page.locator("#grid td.cell")
    assert page.locator("#grid tbody tr").count() == len(PERSONS)
    assert cells.count() == len(PERSONS) * 200  # not all 1,350 before anything is asked for
    more = page.locator("#grid-more")
    assert more.is_visible() and more.inner_text().startswith(f"segments 1–200 of {UTTERANCES} drawn")
    # scrolling to the right end draws the next segments
    page.eval_on_selector("#grid-wrap", "w => { w.scrollLeft = w.scrollWidth; }")
    page.wait_for_function("document.querySelectorAll('#grid td.cell').length > 600")
    assert cells.count() == len(PERSONS) * 400
    more.click()  # and so does the button, up to the last segment
    assert cells.count() == len(PERSONS) * UTTERANCES and not more.is_visible()
    assert page.locator("#grid thead th").count() == UTTERANCES + 1
    assert page.locator("#grid thead th").last.inner_text() == str(UTTERANCES - 1)
    last = UTTERANCES - 1
    page.click(f'#grid td[data-p="{PERSONS.index(PERSONS[last % 3])}"][data-s="{last}"]')
    assert page.inner_text("#detail .utt") == f"{PERSONS[last % 3]}: turn {last}"
    assert page.locator(f'#detail section.sample[data-sample="meeting/{last}"]').count() == 1
    # another conversation (here the same one again) starts from its first segments
    page.fill("#search", "meeting")
    page.locator("#convs button").first.click()
    assert cells.count() == len(PERSONS) * 200
    assert errors == []
    page.close()


def labelled_page(tmp_path, names: list[str]):
    """A page of random scenes labelled ``names`` (every label predicted everywhere)."""
    store = random_store(n=30, n_labels=len(names), persons=(3, 3), segments=(6, 6), seed=2)
    store.label_names = tuple(names)
    bundle = DataBundle({"test": store}, store.label_names, "native", "<memory>")
    html = tmp_path / "labels.html"
    html.write_text(render_page(page_data(bundle, "test", records_for(store, threshold=0.01))))
    return html


def test_two_dozen_labels_keep_the_page_as_wide_as_the_window(browser, tmp_path):  # noqa: F811
    """24 labels: the per-person summary (a column per label) scrolls inside its box instead of
    pushing the page past the window; the legend and swatches keep each label's pattern."""
    names = [f"emotion{k:02d}" for k in range(24)]
    page, errors = open_page(browser, labelled_page(tmp_path, names))
    assert page.locator("#shares th").count() > 20  # the summary has its column per label
    assert page.evaluate("document.documentElement.scrollWidth") <= 1400
    # past the palette's seven colours a swatch repeats a colour with a pattern, as the chips do
    images = page.evaluate(
        "Array.from(document.querySelectorAll('#per-label .swatch')).map((s) => getComputedStyle(s).backgroundImage)"
    )
    assert images[0] == "none" and images[7] != "none"
    assert errors == []
    page.close()


def test_label_codes_count_characters_not_utf16_units(browser, tmp_path):  # noqa: F811
    """A label that starts with astral characters (emoji) is cut where Python's label_codes cuts
    it: never inside a character."""
    names = ["😀😃😄x", "😀😃😄y", "ab😀cd", "ключ", "怒り"]
    page, errors = open_page(browser, labelled_page(tmp_path, names))
    codes = page.locator("#legend .chip").all_inner_texts()
    assert codes == [c if c == n else f"{c} = {n}" for c, n in zip(label_codes(names), names)]
    assert errors == []
    page.close()
