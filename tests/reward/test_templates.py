import numpy as np
import pytest

from rdance.world.pairs import PreferencePairs
from rdance.reward import templates as T
from rdance.reward.rows import RowBuilder, RowSpec
from rdance.reward.folder import load_tokenizer


@pytest.fixture(scope="module")
def template(rm_folder):
    return T.TokenTemplate(load_tokenizer(rm_folder))


def test_pairwise_question_reads_as_the_paper_asks():
    q = T.pairwise_question("two red circles", "alignment", "decision_first", "<A>", "<B>")
    assert q.startswith("Image 1: <A>\nImage 2: <B>\n")
    assert 'generated from the prompt: "two red circles". Is image 2 better than image 1?' in q
    assert T.CRITERIA["alignment"] in q and q.endswith('Answer "yes" or "no", then give the reason.')
    assert T.pairwise_question("p", "my own criteria", "none", "a", "b").count("my own criteria") == 1
    with pytest.raises(T.TemplateError, match="answer format 'free'"):
        T.pointwise_question("p", "alignment", "free", "a")


def test_answers_put_the_decision_where_it_is_read():
    assert T.answer(True, "because", "decision_first") == "yes. because"
    assert T.answer(False, "because", "rationale_first") == "because So the answer is no"
    assert T.answer(True, "because", "none") == "yes"
    assert T.fill_rationale("{preferred} wins; {other} fails", True) == "image 2 wins; image 1 fails"


def test_image_tokens_expand_as_the_internvl_processor_does(template):
    enc = template.encode(T.pointwise_question("a red circle", "alignment", "none", template.placeholder), [16])
    ids = list(enc.prompt_ids)
    start = ids.index(template.start_id)
    assert ids[start + 1:start + 17] == [template.context_id] * 16 and ids[start + 17] == template.end_id
    with pytest.raises(T.TemplateError, match="1 image placeholders but 2 images"):
        template.encode(T.pointwise_question("p", "alignment", "none", template.placeholder), [16, 16])


def test_rows_train_both_orders_with_balanced_labels(template):
    spec = RowSpec(image_size=32, tokens_per_tile=4, max_prompt_tokens=100, max_answer_tokens=80,
                   answer_format="decision_first")
    record = PreferencePairs(1, seed=0)[0]
    rows = RowBuilder(template, spec)(record)
    assert rows["input_ids"].shape == (2, 180) and rows["images"].shape == (4, 32, 32, 3)
    assert sorted(rows["yes"]) == [0, 1]
    # Row 0 shows (reference=A, candidate=B): "yes" iff B won; row 1 the swap.
    assert rows["yes"][0] == record.label
    np.testing.assert_array_equal(rows["images"][1], record.images[1])
    np.testing.assert_array_equal(rows["images"][2], record.images[1])
    for r in range(2):
        decision = rows["targets"][r][rows["target_kind"][r] == 1]
        assert list(decision) == [template.yes_id if rows["yes"][r] else template.no_id]
        assert rows["targets"][r, 99] == decision[0]  # read at the last prompt column
        assert rows["attention_mask"][r, 99] == 1 and rows["input_ids"][r, 100] == decision[0]
    text = template.tokenizer.decode(rows["input_ids"][0][rows["attention_mask"][0] == 1])
    assert "image 2" in text and "{preferred}" not in text


def test_too_long_prompts_are_refused(template):
    spec = RowSpec(image_size=32, tokens_per_tile=4, max_prompt_tokens=20, max_answer_tokens=4)
    with pytest.raises(T.TemplateError, match="rm.max_prompt_tokens=20"):
        RowBuilder(template, spec)(PreferencePairs(1, seed=0)[0])


def test_yes_must_be_one_known_token(tmp_path):
    from rdance.data.tokenizer import build_word_tokenizer
    build_word_tokenizer(["only no here"], str(tmp_path))
    with pytest.raises(T.TemplateError, match="'yes'.*not as one known token"):
        T.TokenTemplate(load_tokenizer(str(tmp_path)))


def test_caption_rows_answer_with_the_prompt(template):
    from rdance.world.pairs import WorldCaptions
    spec = RowSpec(paradigm="caption", image_size=32, tokens_per_tile=4, max_prompt_tokens=40,
                   max_answer_tokens=16)
    record = WorldCaptions(1, seed=0)[0]
    rows = RowBuilder(template, spec)(record)
    assert rows["input_ids"].shape == (1, 56) and rows["images"].shape == (1, 32, 32, 3)
    answer = rows["targets"][0][rows["target_kind"][0] > 0]
    assert template.tokenizer.decode(answer[:-1]) == record.prompt.replace(" ", " ")


def test_grounding_question_rows_answer_yes_for_what_was_drawn_and_no_for_a_near_miss(template):
    from rdance.world.pairs import WorldCaptions
    spec = RowSpec(paradigm="caption", image_size=32, tokens_per_tile=4, max_prompt_tokens=48,
                   max_answer_tokens=16)
    source = WorldCaptions(40, seed=0, question_share=0.5)
    records = [source[i] for i in range(40)]
    questions = [r for r in records if r.criteria == WorldCaptions.QUESTION]
    assert 10 < len(questions) < 30 and {r.label for r in questions} == {0, 1}
    for record in questions:
        rows = RowBuilder(template, spec)(record)
        text = template.tokenizer.decode(rows["input_ids"][0][rows["attention_mask"][0] > 0])
        assert f'show " {record.prompt} "?' in text and "<unk>" not in text   # the word tokenizer spaces words
        answer = rows["targets"][0][rows["target_kind"][0] > 0]
        assert template.tokenizer.decode(answer[:1]) == ("yes" if record.label == 1 else "no")
    with pytest.raises(ValueError, match="question_share"):
        WorldCaptions(1, seed=0, question_share=1.5)
