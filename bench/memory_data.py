"""A memory benchmark in the shape of LongMemEval, generated here (no download).

Agents at a service desk, each with customers (subjects) and dozens of past runs. In
each past run a customer tells the agent a few facts about themselves between turns
of small talk, and the agent's step remembers each fact (subject = the customer, key =
the attribute). Some facts change in a later run (a move, a new job): the newer memory
supersedes the older. Then questions, each asked in a new run about one customer:

- ``single``: one fact told in one past run;
- ``multi``: two facts told in two different past runs, both needed;
- ``update``: a fact that changed; answered only by the current value, never the old;
- ``none``: an attribute this customer never mentioned (but others did): no answer.

Everything comes from one seeded ``random.Random``: the same arguments give the same
data set, byte for byte.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

NAMES = """Alice Bruno Chiara Dmitri Elena Farid Greta Hiro Ines Jonas Kaia Liam Mara Nadia
Oskar Priya Quentin Rosa Sami Tomas Uma Viktor Wen Ximena Yusuf Zora Anders Beatriz Cyrus
Dalia Emil Fatima Gideon Hana Ivo Jana Kofi Lena Mateo Noor Olga Pavel Rania Stellan Tara
Ugo Vera Wilhelm Yara Zeno""".split()

# attribute -> (how the customer says it, how the agent writes it down, questions, values)
ATTRIBUTES: dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...]]] = {
    "city": (
        "I live in {v} these days.",
        "{n} lives in {v}.",
        ("Which city does {n} live in?", "Where does {n} live now?"),
        "Lisbon Porto Oslo Bergen Krakow Gdansk Leipzig Dresden Lyon Nantes Turin Genoa "
        "Seville Malaga Tampere Aarhus".split(),
    ),
    "job": (
        "I work as a {v}.",
        "{n} works as a {v}.",
        ("What does {n} work as?", "What is {n}'s work these days?"),
        "nurse carpenter pharmacist surveyor translator welder librarian architect "
        "electrician baker pilot dentist".split(),
    ),
    "pet": (
        "At home I have a {v}.",
        "{n} has a pet {v}.",
        ("What pet does {n} have?", "Which animal is {n}'s pet?"),
        "tortoise parrot beagle ferret goldfish hamster iguana poodle rabbit canary".split(),
    ),
    "car": (
        "I drive a {v}.",
        "{n} drives a {v} car.",
        ("What car does {n} drive?", "Which car model is {n} driving?"),
        "Volvo Skoda Fiat Peugeot Toyota Renault Dacia Mazda Subaru Kia".split(),
    ),
    "bank": (
        "My account is with {v}.",
        "{n} banks with {v} (account).",
        ("Which bank holds {n}'s account?", "Where does {n} keep a bank account?"),
        "Nordea Santander Rabobank Unicredit Barclays Handelsbanken Sparkasse Millennium".split(),
    ),
    "allergy": (
        "I am allergic to {v}.",
        "{n} is allergic to {v}.",
        ("What is {n} allergic to?", "Which allergy does {n} have?"),
        "peanuts penicillin pollen shellfish latex gluten sesame dust".split(),
    ),
    "sport": (
        "On weekends I play {v}.",
        "{n} plays {v} as a sport.",
        ("Which sport does {n} play?", "What sport is {n} into?"),
        "tennis handball badminton volleyball squash rugby hockey cricket".split(),
    ),
    "language": (
        "At home we speak {v}.",
        "{n} speaks {v} at home (language).",
        ("Which language does {n} speak at home?", "What language is spoken in {n}'s home?"),
        "Polish Portuguese Finnish Danish Czech Greek Turkish Hungarian".split(),
    ),
}

SMALL_TALK = """weather today invoice delivery parcel statement payment appointment schedule
office queue form signature printer update portal password reminder receipt balance fee
discount coupon branch opening hours holiday traffic train bus coffee lunch meeting
colleague weekend report review question answer thanks please maybe tomorrow yesterday
morning evening quick short long simple online paper copy email letter call message""".split()


@dataclass(frozen=True)
class Fact:
    subject: str  # lower-case name: the memory's subject
    name: str
    attribute: str
    value: str
    run: int  # which of the agent's past runs told it

    @property
    def said(self) -> str:
        return ATTRIBUTES[self.attribute][0].format(v=self.value)

    @property
    def memory(self) -> str:
        return ATTRIBUTES[self.attribute][1].format(n=self.name, v=self.value)


@dataclass
class PastRun:
    subject: str
    turns: list[tuple[str, str]]  # (role, content)
    facts: list[Fact]


@dataclass(frozen=True)
class Question:
    agent: str
    kind: str  # single | multi | update | none
    subject: str
    text: str
    needed: tuple[str, ...]  # memory contents that must be in the context
    stale: tuple[str, ...] = ()  # contents that must not be (superseded values)
    attribute: str = ""
    # The same, as the customer said them in a past conversation (for the baselines,
    # whose context is turns, not memories).
    needed_said: tuple[str, ...] = ()
    stale_said: tuple[str, ...] = ()


@dataclass
class AgentData:
    name: str
    runs: list[PastRun] = field(default_factory=list)


def _chatter(rnd: random.Random, words: int) -> str:
    text = " ".join(rnd.choice(SMALL_TALK) for _ in range(words))
    return text[0].upper() + text[1:] + "."


def generate(
    agents: int = 12, runs: int = 30, subjects: int = 6, seed: int = 2026
) -> tuple[list[AgentData], list[Question]]:
    rnd = random.Random(seed)
    data: list[AgentData] = []
    questions: list[Question] = []
    for a in range(agents):
        agent = AgentData(f"desk-{a:02d}")
        names = rnd.sample(NAMES, subjects)
        # What each customer will tell, in which run; a quarter of the facts change later.
        told: dict[str, dict[str, list[Fact]]] = {n.lower(): {} for n in names}
        plan: list[list[Fact]] = [[] for _ in range(runs)]
        run_subject = [rnd.choice(names) for _ in range(runs)]
        for name in names:
            attrs = rnd.sample(sorted(ATTRIBUTES), 5)  # 3 never told: "none" questions
            mine = [i for i in range(runs) if run_subject[i] == name] or [rnd.randrange(runs)]
            for attr in attrs:
                first = rnd.choice(mine[: max(1, len(mine) - 1)])
                values = rnd.sample(ATTRIBUTES[attr][3], 2)
                chain = [Fact(name.lower(), name, attr, values[0], first)]
                later = [i for i in mine if i > first]
                if later and rnd.random() < 0.3:
                    chain.append(Fact(name.lower(), name, attr, values[1], rnd.choice(later)))
                for f in chain:
                    run_subject[f.run] = name
                    plan[f.run].append(f)
                told[name.lower()][attr] = chain
        for i in range(runs):
            name = run_subject[i]
            turns: list[tuple[str, str]] = []
            for f in plan[i]:
                turns.append(("user", f"{_chatter(rnd, rnd.randint(8, 25))} {f.said}"))
                turns.append(("assistant", f"Noted. {_chatter(rnd, rnd.randint(6, 20))}"))
            for _ in range(rnd.randint(4, 10)):
                turns.append(("user", _chatter(rnd, rnd.randint(10, 40))))
                turns.append(("assistant", _chatter(rnd, rnd.randint(10, 40))))
            rnd.shuffle(turns)
            agent.runs.append(PastRun(name.lower(), turns, plan[i]))
        for name in names:
            subject = name.lower()
            facts = told[subject]
            for attr, chain in sorted(facts.items()):
                template = rnd.choice(ATTRIBUTES[attr][2])
                q = template.format(n=name)
                new, old = chain[-1], chain[:-1]
                questions.append(
                    Question(
                        agent.name,
                        "update" if old else "single",
                        subject,
                        q,
                        (new.memory,),
                        tuple(f.memory for f in old),
                        attr,
                        (new.said,),
                        tuple(f.said for f in old),
                    )
                )
            singles = [c[0] for c in facts.values() if len(c) == 1]
            pairs = [
                (x, y) for i, x in enumerate(singles) for y in singles[i + 1 :] if x.run != y.run
            ]
            for x, y in rnd.sample(pairs, min(2, len(pairs))):
                q1 = ATTRIBUTES[x.attribute][2][0].format(n=name).rstrip("?")
                q2 = ATTRIBUTES[y.attribute][2][0].format(n=name)
                questions.append(
                    Question(
                        agent.name,
                        "multi",
                        subject,
                        f"{q1}, and {q2[0].lower()}{q2[1:]}",
                        (x.memory, y.memory),
                        needed_said=(x.said, y.said),
                    )
                )
            for attr in sorted(set(ATTRIBUTES) - set(facts))[:2]:
                q = ATTRIBUTES[attr][2][0].format(n=name)
                # The distractors: what other customers of this agent said about it.
                others = [
                    f
                    for other, theirs in told.items()
                    if other != subject
                    for f in theirs.get(attr, [])
                ]
                questions.append(
                    Question(
                        agent.name,
                        "none",
                        subject,
                        q,
                        (),
                        tuple(f.memory for f in others),
                        attr,
                        (),
                        tuple(f.said for f in others),
                    )
                )
        data.append(agent)
    return data, questions
