"""Prompt files as users have them: text, GenEval metadata JSONL, DrawBench CSV, PartiPrompts TSV;
bad files are named with the line and the fix."""
import json

import pytest

from rdance.data.prompt_sets import PromptFileError, read_prompt_set


def test_text_geneval_drawbench_and_parti_files(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \n")
    assert [i.prompt for i in read_prompt_set(tmp_path / "p.txt")] == ["a cat", "a dog"]
    geneval = {"tag": "counting", "include": [{"class": "cat", "count": 2}], "prompt": "a photo of two cats"}
    (tmp_path / "evaluation_metadata.jsonl").write_text(json.dumps(geneval) + "\n")
    (item,) = read_prompt_set(tmp_path / "evaluation_metadata.jsonl")
    assert (item.prompt, item.category, item.metadata) == ("a photo of two cats", "counting", geneval)
    (tmp_path / "drawbench.csv").write_text('Prompts,Category\n"A red colored car.",Colors\nA cube,Counting\n')
    assert [(i.prompt, i.category) for i in read_prompt_set(tmp_path / "drawbench.csv")] == [
        ("A red colored car.", "Colors"), ("A cube", "Counting")]
    (tmp_path / "parti.tsv").write_text("Prompt\tCategory\tChallenge\tNote\nbond\tAbstract\tBasic\t\n")
    (item,) = read_prompt_set(tmp_path / "parti.tsv")
    assert (item.prompt, item.category, item.metadata["Challenge"]) == ("bond", "Abstract", "Basic")


@pytest.mark.parametrize("name, content, message", [
    ("a.jsonl", '{"prompt": "ok"}\n{"text": "no prompt"}\n', "a.jsonl:2: needs a non-empty string field 'prompt'"),
    ("b.jsonl", "not json\n", "b.jsonl:1: not JSON"),
    ("c.csv", "Caption2,Category\nx,y\n", "no prompt column among ['Caption2', 'Category']"),
    ("d.csv", "Prompt\nfine\n\"\"\n", "d.csv:3: empty prompt"),
    ("e.txt", "\n\n", "no prompts in it"),
])
def test_bad_prompt_files_are_named(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(PromptFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_prompt_set(tmp_path / name)


def test_missing_file(tmp_path):
    with pytest.raises(PromptFileError, match="no such file"):
        read_prompt_set(tmp_path / "nope.txt")
