"""Files as the public preference sets ship them: images named by a path inside the dataset's
folder, found extracted or inside the zip archive that holds them, and a JSON array of records
read one element at a time (HPDv2's train.json has 645k of them).
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Iterator

from rdance.data.records import BadRecord


class ImageFiles:
    """The bytes of images named relative to a dataset's folder ``root``.

    ``a/b/c.webp`` is the file itself when it was extracted, else an entry of the zip archive
    beside it that holds it: ``a/b.zip`` (entry ``c.webp``, ``b/c.webp`` or ``a/b/c.webp``), then
    ``a.zip`` (``b/c.webp``, ...): the layouts of ImageRewardDB (``images/<split>/<split>_N.zip``)
    and of HPDv2 (``<split>.zip`` or the extracted ``<split>/`` folder). Archives are opened once.
    A path that leaves ``root`` is refused: a shared dataset must not make its reader open
    arbitrary files.
    """

    def __init__(self, root: str):
        self.root = os.path.realpath(root)
        self._archives: dict[str, zipfile.ZipFile] = {}

    def read(self, relative: str, where: str) -> bytes:
        parts = os.path.normpath(relative).replace(os.sep, "/").split("/")
        if os.path.isabs(relative) or parts[0] == "..":
            raise BadRecord(f"{where}: image path {relative!r} leads outside the dataset folder {self.root}; "
                            "give paths inside it, as the dataset's own metadata does", "outside_data_folder")
        path = os.path.join(self.root, *parts)
        if os.path.isfile(path):
            if os.path.commonpath([os.path.realpath(path), self.root]) != self.root:
                raise BadRecord(f"{where}: image {relative!r} is a link out of the dataset folder {self.root}",
                                "outside_data_folder")
            with open(path, "rb") as f:
                return f.read()
        for cut in range(len(parts) - 1, 0, -1):
            archive = os.path.join(self.root, *parts[:cut]) + ".zip"
            if not os.path.isfile(archive):
                continue
            names = ("/".join(parts[cut:]), "/".join(parts[cut - 1:]), "/".join(parts))
            for name in names:
                try:
                    return self._archive(archive).read(name)
                except KeyError:
                    pass
            raise BadRecord(f"{where}: image {relative!r} is not in {archive} (looked for "
                            f"{', '.join(names)}); the archive is incomplete or of another release",
                            "image_missing")
        raise BadRecord(f"{where}: image {relative!r} is neither a file under {self.root} nor in a zip archive "
                        f"there (such as {parts[0]}.zip); download the dataset's image archives into that folder",
                        "image_missing")

    def _archive(self, path: str) -> zipfile.ZipFile:
        if path not in self._archives:
            try:
                self._archives[path] = zipfile.ZipFile(path)
            except zipfile.BadZipFile as e:
                raise BadRecord(f"{path}: not a readable zip archive ({e}); download it again", "bad_file") from None
        return self._archives[path]


def json_array(path: str, chunk_bytes: int = 1 << 20) -> Iterator[dict]:
    """The elements of the JSON array of objects in ``path``, one at a time, reading
    ``chunk_bytes`` at a time: memory holds about one chunk, not the file."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buffer, position, started, index = "", 0, False, 0

        def read_more() -> bool:
            nonlocal buffer, position
            more = f.read(chunk_bytes)
            buffer, position = buffer[position:] + more, 0
            return bool(more)

        while True:
            while position < len(buffer) and buffer[position] in " \t\r\n,":   # between elements
                position += 1
            if position == len(buffer):
                if read_more():
                    continue
                raise BadRecord(f"{path}: ends before its JSON array closes (truncated?); download it again",
                                "bad_file")
            if not started:
                if buffer[position] != "[":
                    raise BadRecord(f"{path}: not a JSON array of records (it starts with {buffer[position]!r})",
                                    "bad_file")
                started, position = True, position + 1
                continue
            if buffer[position] == "]":
                return
            try:
                element, end = decoder.raw_decode(buffer, position)
            except json.JSONDecodeError as e:
                if read_more():   # the element runs past what was read: read on
                    continue
                raise BadRecord(f"{path}: element {index} is not valid JSON ({e.msg}); the file is damaged, "
                                "download it again", "bad_file") from None
            if not isinstance(element, dict):
                raise BadRecord(f"{path}: element {index} is a {type(element).__name__}, not a record object",
                                "bad_file")
            yield element
            index, position = index + 1, end
