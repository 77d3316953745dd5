"""The shipped multi-task example: three tasks an edge app ships together, written by rules and templates.

- `intent`: a phone assistant's request -> one label of a fixed set (exact-label accuracy);
- `extract`: a short message -> a JSON object of named fields (exact field match);
- `reply`: a customer's message -> a short, friendly reply (no target: the teacher writes it, and the
  task is scored by perplexity and KL against the teacher).

Every record is drawn from a seeded generator, so the files in `edgeft/assets/tasks/` are this module's
output byte for byte (a test regenerates them). No data set is downloaded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from edgeft.atomic_io import write_text

SEED = 18
RECORDS_PER_TASK = 240
INTENT_LABELS = ("set_alarm", "set_timer", "play_music", "weather", "send_message", "call_contact", "navigate",
                 "add_reminder")
EXTRACT_FIELDS = ("person", "day", "time", "place")

NAMES = ("Maria", "Tom", "Aisha", "Kenji", "Lucas", "Priya", "Olga", "Samuel", "Chen", "Fatima", "Diego", "Hannah",
         "Omar", "Yuki", "Ben", "Sofia")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
TIMES = ("7 am", "8:30 am", "9 am", "10:15 am", "noon", "1 pm", "2:45 pm", "4 pm", "6 pm", "7:30 pm")
PLACES = ("the library", "Cafe Luna", "the gym", "the station", "the office", "Green Park", "the museum",
          "Pizza Roma", "the airport", "the dentist")
SONGS = ("some jazz", "my running playlist", "the new Adele album", "lo-fi beats", "classical piano", "90s rock",
         "something relaxing", "the top hits")
CITIES = ("Paris", "Tokyo", "Berlin", "Lagos", "Lima", "Toronto", "Mumbai", "Sydney", "Oslo", "Cairo")
DURATIONS = ("5 minutes", "10 minutes", "twenty minutes", "half an hour", "an hour", "90 seconds", "3 minutes")
CHORES = ("buy milk", "call the bank", "water the plants", "pay rent", "renew my passport", "book a haircut",
          "send the report", "pick up the kids")

INTENT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "set_alarm": ("wake me up at {time}", "set an alarm for {time} on {day}", "alarm at {time} please",
                  "I need to get up at {time} tomorrow", "can you set my alarm to {time}"),
    "set_timer": ("set a timer for {duration}", "timer {duration}", "start a {duration} countdown",
                  "let me know when {duration} have passed", "count down {duration} for the pasta"),
    "play_music": ("play {song}", "put on {song}", "I want to listen to {song}", "start {song} on the speaker",
                   "can you play {song} for me"),
    "weather": ("what's the weather in {city}", "will it rain in {city} on {day}", "how hot is it in {city} today",
                "do I need an umbrella in {city}", "forecast for {city} this {day}"),
    "send_message": ("text {name} that I'm running late", "send a message to {name}: see you at {time}",
                     "tell {name} I'll be at {place} soon", "message {name} happy birthday",
                     "write to {name} that the meeting moved to {day}"),
    "call_contact": ("call {name}", "ring {name} on speaker", "phone {name} please", "can you dial {name}",
                     "start a video call with {name}"),
    "navigate": ("take me to {place}", "directions to {place}", "how do I get to {place} from here",
                 "navigate to {place} avoiding tolls", "start route to {place}"),
    "add_reminder": ("remind me to {chore}", "remind me on {day} to {chore}", "don't let me forget to {chore}",
                     "add a reminder: {chore} at {time}", "set a reminder to {chore} this {day}"),
}

EXTRACT_TEMPLATES = (
    "{person} wants to meet at {place} on {day} at {time}.",
    "Lunch with {person} on {day}, {time}, at {place}.",
    "Reminder: {day} {time} - coffee with {person} at {place}.",
    "Can we move my call with {person} to {day} at {time}? Meet at {place}.",
    "{day} at {time}: dinner with {person}, {place}.",
    "Hi! {person} here. See you {day} around {time} at {place}.",
)

REPLY_OPENERS = ("My order", "The package", "My refund", "The app", "My subscription", "The headphones", "My account",
                 "The delivery", "The charger", "My booking")
REPLY_PROBLEMS = ("arrived two days late", "still hasn't shown up", "was charged twice", "keeps crashing when I log in",
                  "stopped working after a week", "was cancelled without any notice", "came with a missing part",
                  "is much better than I expected", "was fixed so quickly, thank you", "shows the wrong address")
REPLY_ASKS = ("What can you do?", "Can you help?", "Please advise.", "Just wanted to say thanks!", "Is this normal?",
              "How long will it take?")


# Each task's instruction is its system turn, the record's own text its user turn: what varies between
# records is then the record itself, which the data stage's near-duplicate filter compares.
INTENT_SYSTEM = (f"Classify the user's request into one intent. Intents: {', '.join(INTENT_LABELS)}. "
                 "Answer with the intent only.")
EXTRACT_SYSTEM = f"Extract the fields {', '.join(EXTRACT_FIELDS)} from the user's message as one JSON object."
REPLY_SYSTEM = "You are customer support. Write a short, friendly reply to the customer's message."


def _record(system: str, user: str, target: str | None, task: str, domain: str) -> dict:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if target is not None:
        messages.append({"role": "assistant", "content": target})
    return {"messages": messages, "metadata": {"task_type": task, "domain": domain, "language": "en"}}


def _fill(rng: random.Random, template: str) -> str:
    return template.format(time=rng.choice(TIMES), day=rng.choice(DAYS), song=rng.choice(SONGS), city=rng.choice(CITIES),
                           duration=rng.choice(DURATIONS), name=rng.choice(NAMES), place=rng.choice(PLACES),
                           chore=rng.choice(CHORES))


def intent_records(rng: random.Random, n: int) -> list[dict]:
    out, seen = [], set()
    while len(out) < n:
        label = INTENT_LABELS[len(out) % len(INTENT_LABELS)]  # balanced classes
        request = _fill(rng, rng.choice(INTENT_TEMPLATES[label]))
        if rng.random() < 0.3:
            request = request.capitalize() + rng.choice(("?", ".", "!", ""))
        if request in seen:
            continue
        seen.add(request)
        out.append(_record(INTENT_SYSTEM, request, label, "intent", "assistant"))
    return out


def extract_records(rng: random.Random, n: int) -> list[dict]:
    out, seen = [], set()
    while len(out) < n:
        fields = {"person": rng.choice(NAMES), "day": rng.choice(DAYS), "time": rng.choice(TIMES), "place": rng.choice(PLACES)}
        message = rng.choice(EXTRACT_TEMPLATES).format(**fields)
        if message in seen:
            continue
        seen.add(message)
        out.append(_record(EXTRACT_SYSTEM, message, json.dumps(fields), "extract", "calendar"))
    return out


def reply_records(rng: random.Random, n: int) -> list[dict]:
    out, seen = [], set()
    while len(out) < n:
        message = f"{rng.choice(REPLY_OPENERS)} {rng.choice(REPLY_PROBLEMS)}. {rng.choice(REPLY_ASKS)}"
        if message in seen:
            continue
        seen.add(message)
        out.append(_record(REPLY_SYSTEM, message, None, "reply", "support"))
    return out


TASKS = {"intent": intent_records, "extract": extract_records, "reply": reply_records}


def task_rows(task: str, n: int = RECORDS_PER_TASK, seed: int = SEED) -> list[dict]:
    return TASKS[task](random.Random(f"{seed}:{task}"), n)


def write(folder: Path, n: int = RECORDS_PER_TASK, seed: int = SEED) -> dict[str, Path]:
    """Each task's JSONL in `folder`, written atomically."""
    paths = {}
    for task in TASKS:
        rows = task_rows(task, n, seed)
        paths[task] = Path(folder) / f"{task}.jsonl"
        write_text(paths[task], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return paths


def shipped_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "assets" / "tasks"


if __name__ == "__main__":
    for name, path in write(shipped_dir()).items():
        print(f"{name}: {path}")
