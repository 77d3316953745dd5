"""The source's own file's greedy answers, kept on disk between benches.

Why: they depend only on that file's bytes, the prompt's ids, the answer budget and the runtime (its
package versions, threads and context), none of which a build changes; producing them loads a
second model beside the artifact and the source and answers every fixed prompt with it, on every
bench of every build from that file (every level of a `--quant auto` sweep too). So they are keyed
by all of those, and a miss loads the file once and answers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from edgeft.atomic_io import write_json
from edgeft.backends.base import Generation

if TYPE_CHECKING:
    from edgeft.backends.base import Artifact
    from edgeft.config import Target


def default_dir() -> Path:
    from edgeft.data.synthesize import default_cache_dir

    return default_cache_dir().parent / "own-file-answers"  # beside the teacher targets, under $EDGEFT_CACHE


class OwnFileAnswers:
    """A runner's `generate` for the source's own file, answered from the cache where it can be; its
    `hits` and `misses` say which."""

    def __init__(self, artifact: "Artifact", target: "Target", cache_dir: Path | None = None):
        from edgeft.backends.registry import info
        from edgeft.bench.machine import package_versions
        from edgeft.manifest import sha256

        self.artifact, self.target = artifact, target
        key = {"files": [sha256(f) for f in artifact.files], "backend": artifact.backend,
               "versions": package_versions(info(artifact.backend).tracked_packages),
               "threads": target.resolved_threads(), "context": target.bench.context}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        self.path = (cache_dir or default_dir()) / f"{digest[:32]}.json"
        self.answers: dict[str, list[int]] = self._read()
        self.runner = None
        self.hits = self.misses = 0

    def _read(self) -> dict[str, list[int]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return {k: [int(t) for t in v] for k, v in data["answers"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}  # none yet, or unreadable: answered again and written whole

    def generate(self, ids: Sequence[int], new_tokens: int) -> Generation:
        key = f"{new_tokens}:{','.join(map(str, ids))}"
        if key in self.answers:
            self.hits += 1
            tokens = self.answers[key]
        else:
            self.misses += 1
            if self.runner is None:
                from edgeft.backends.registry import get_backend

                self.runner = get_backend(self.artifact.backend).load(self.artifact, self.target)
            tokens = list(self.runner.generate(list(ids), new_tokens).tokens)
            self.answers[key] = tokens
            try:
                write_json(self.path, {"file": str(self.artifact.path), "answers": self.answers})
            except OSError:
                pass  # a cache that cannot be written only costs the next bench this time again
        return Generation(prompt_tokens=len(ids), tokens=list(tokens), token_times=[])

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
