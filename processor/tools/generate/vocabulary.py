"""What the generator draws from: the names, areas and titles, the rates of every policy situation
(scenarios per project), the showcase forced into the first chunk, and the corruptions. The
enumerations are the contract's (their order is the codes the scenarios use)."""
from __future__ import annotations

import numpy as np

from processor.export import contract

# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------
AREAS = ("development", "design", "marketing", "data", "product", "content",
         "translation", "legal")
AREA_W = np.array([0.34, 0.20, 0.14, 0.12, 0.08, 0.07, 0.025, 0.025])
N_AREAS = len(AREAS)
TS_AREAS = 6            # areas 0..5 have eligible Top Shakers
A_TRANSLATION = 6       # no Top Shaker at all
A_LEGAL = 7             # only rejected Top Shakers

ROLES = contract.ROLES
R_CLIENT, R_TALENT, R_PS = 0, 1, 2
USTATUS = contract.USER_STATUSES
PSTATUS = contract.PROJECT_STATUSES
HOLD = contract.HOLD_REASONS
DECISION = contract.TALENT_DECISIONS
D_WAIT, D_CLOSE, D_CONTINUE, D_HALT = 0, 1, 2, 3
MSTATUS = contract.MILESTONE_STATUSES
MS_PENDING, MS_ACTIVE, MS_COMPLETED, MS_VALIDATED, MS_RELEASED = range(5)
ISTATUS = contract.INVOICE_STATUSES
I_OPEN, I_PAID, I_VOID = 0, 1, 2
MADE_BY = contract.ATTEMPT_MAKERS
CHANNEL = contract.ATTEMPT_CHANNELS
CURRENCY = ("EUR", "USD", "GBP")

FIRST = [("Ana", "ana"), ("Lucía", "lucia"), ("Marta", "marta"),
         ("Javier", "javier"), ("José", "jose"), ("Pablo", "pablo"),
         ("Carmen", "carmen"), ("Laura", "laura"), ("Diego", "diego"),
         ("Sofía", "sofia"), ("Miguel", "miguel"), ("Elena", "elena"),
         ("Jordi", "jordi"), ("Núria", "nuria"), ("Iker", "iker"),
         ("Ainhoa", "ainhoa"), ("Tom", "tom"), ("Emma", "emma"),
         ("Lukas", "lukas"), ("Chloé", "chloe"), ("Giulia", "giulia"),
         ("Mateo", "mateo"), ("Inés", "ines"), ("Hugo", "hugo"),
         ("Olga", "olga"), ("Raúl", "raul"), ("Sara", "sara"), ("Nico", "nico"),
         ("Aitana", "aitana"), ("Joan", "joan"), ("Zoë", "zoe"),
         ("Björn", "bjorn")]
LAST = [("García", "garcia"), ("Martínez", "martinez"), ("López", "lopez"),
        ("Sánchez", "sanchez"), ("Pérez", "perez"), ("Gómez", "gomez"),
        ("Fernández", "fernandez"), ("Ruiz", "ruiz"), ("Díaz", "diaz"),
        ("Moreno", "moreno"), ("Muñoz", "munoz"), ("Álvarez", "alvarez"),
        ("Romero", "romero"), ("Navarro", "navarro"), ("Torres", "torres"),
        ("Domínguez", "dominguez"), ("Vázquez", "vazquez"), ("Ramos", "ramos"),
        ("Gil", "gil"), ("Serra", "serra"), ("Puig", "puig"),
        ("Müller", "muller"), ("Smith", "smith"), ("Rossi", "rossi"),
        ("Dubois", "dubois"), ("O'Brien", "obrien"), ("Núñez", "nunez"),
        ("Iglesias", "iglesias"), ("Castro", "castro"), ("Ortega", "ortega")]
COMPANY_A = ["Nimbus", "Atlas", "Brisa", "Cobalt", "Delta", "Faro", "Granito",
             "Helix", "Indigo", "Lumen", "Marea", "Nova", "Orbital", "Pixel",
             "Quasar", "Rumbo", "Sierra", "Tandem", "Vela", "Zenit"]
COMPANY_B = ["Labs", "Studio", "Analytics", "Digital", "Ventures", "Foods",
             "Logistics", "Health", "Retail", "Media"]
COMPANY_S = ["SL", "SA", "Ltd", "GmbH", "Inc."]
TITLES = {
    "development": ["Web app MVP", "API integration with the ERP",
                    "Mobile app, iOS and Android", "Backend refactor",
                    "E-commerce checkout"],
    "design": ["Brand identity", "UX audit and redesign", "Design system",
               'Landing page "Spring launch"', "App UI kit"],
    "marketing": ["Paid social campaign", "SEO, content and analytics",
                  "Email automation", "Go-to-market plan", "Growth experiments"],
    "data": ["Sales dashboard", "Data warehouse on BigQuery",
             "Churn prediction model", "ETL pipelines", "KPI reporting"],
    "product": ["Product discovery", "Roadmap and backlog",
                "User research sprint", "Pricing strategy", "MVP definition"],
    "content": ["Blog articles", "Product copywriting", "Video scripts",
                "Newsletter, monthly", "Case studies"],
    "translation": ["Website localisation ES-EN", "App strings DE/FR",
                    "Legal docs translation", "Subtitles EN", "Catalogue PT"],
    "legal": ["GDPR compliance review", "Terms and conditions",
              "Trademark filing", "Contract templates", "Privacy policy"],
}
PHASES = ["Discovery and scope", "Design", "Build", "Testing, QA and fixes",
          "Launch and handover"]

# --------------------------------------------------------------------------
# Scenario tables (per project)
# --------------------------------------------------------------------------
# status scenarios
(ST_ACTIVE, ST_CLOSED, ST_CCL_CLOSE, ST_CCL_RETURN, ST_CCL_WAIT, ST_CCL_PENDING,
 ST_NP_PAID, ST_NP_UNPAID, ST_HOLD_OTHER, ST_HOLD_TCL) = range(10)
_ST_P = {ST_CLOSED: 0.10, ST_CCL_CLOSE: 0.004, ST_CCL_RETURN: 0.003,
         ST_CCL_WAIT: 0.003, ST_CCL_PENDING: 0.002, ST_NP_PAID: 0.004,
         ST_NP_UNPAID: 0.004, ST_HOLD_OTHER: 0.003, ST_HOLD_TCL: 0.001}
# contact scenarios (active projects only)
(CS_NONE, CS_CLIENT_LOSS, CS_TALENT_LOSS, CS_EXACT7, CS_NOLOSS6, CS_NO_PS,
 CS_AT_RISK, CS_RESET, CS_FUTURE) = range(9)
_CS_P = {CS_CLIENT_LOSS: 0.010, CS_TALENT_LOSS: 0.010, CS_EXACT7: 0.002,
         CS_NOLOSS6: 0.002, CS_NO_PS: 0.002, CS_AT_RISK: 0.015,
         CS_RESET: 0.012, CS_FUTURE: 0.001}
# current-milestone / money scenarios
(M_ACTIVE, M_COMPLETED, M_NOT_STARTED, M_VALIDATED, M_ESC_SHORT,
 M_ESC_SHORT_OVERDUE, M_OVERDUE, M_DUE_TODAY, M_PAID_LATE, M_CLOSED) = range(10)
_M_P = {M_COMPLETED: 0.20, M_NOT_STARTED: 0.08, M_VALIDATED: 0.03,
        M_ESC_SHORT: 0.010, M_ESC_SHORT_OVERDUE: 0.002, M_OVERDUE: 0.03,
        M_DUE_TODAY: 0.006}
# invoice kinds of the current milestone
INV_NONE, INV_PAID, INV_PAID_LATE, INV_FUTURE, INV_TODAY, INV_OVERDUE = range(6)

P_PREV_VALIDATED = 0.01     # milestone before the current one validated, not released
P_REL_NO_VAL = 0.004        # a released milestone without validated_at
P_VOID_INVOICE = 0.01
P_LATE_HISTORY = 0.03
P_ROUTINE = 0.25
P_NOISE = 0.04
P_TS_AS_TALENT = 0.005
P_PAYEE_CLIENT_EVERY = 500   # one plain active project in this many pays its current milestone to the client
P_NO_TS_AREA = 0.12         # share of talent-loss projects in areas w/o Top Shaker


def _probs(table: dict, n: int, first: int = 0) -> np.ndarray:
    p = np.zeros(n)
    for k, v in table.items():
        p[k] = v
    p[first] = 1.0 - p.sum()
    return p


ST_P = _probs(_ST_P, 10, ST_ACTIVE)
CS_P = _probs(_CS_P, 9, CS_NONE)
M_P = _probs(_M_P, 8, M_ACTIVE)

# One project per entry in the first chunk is forced into each situation so
# that even a small export shows every policy situation.
SHOWCASE = [
    dict(cs=CS_CLIENT_LOSS), dict(cs=CS_CLIENT_LOSS, ms=M_COMPLETED),
    dict(cs=CS_TALENT_LOSS, area=0), dict(cs=CS_TALENT_LOSS, area=1),
    dict(cs=CS_TALENT_LOSS, area=A_TRANSLATION),
    dict(cs=CS_TALENT_LOSS, area=A_LEGAL, ms=M_COMPLETED),
    dict(cs=CS_EXACT7), dict(cs=CS_NOLOSS6), dict(cs=CS_NO_PS),
    dict(cs=CS_AT_RISK), dict(cs=CS_RESET), dict(cs=CS_FUTURE),
    dict(st=ST_CCL_CLOSE), dict(st=ST_CCL_CLOSE, ms=M_COMPLETED),
    dict(st=ST_CCL_RETURN), dict(st=ST_CCL_WAIT), dict(st=ST_CCL_PENDING),
    dict(st=ST_NP_PAID), dict(st=ST_NP_UNPAID), dict(st=ST_HOLD_OTHER),
    dict(st=ST_HOLD_TCL), dict(st=ST_CLOSED),
    dict(ms=M_OVERDUE, dec=D_HALT), dict(ms=M_OVERDUE, dec=D_CONTINUE),
    dict(ms=M_OVERDUE, od=1), dict(ms=M_DUE_TODAY),
    dict(ms=M_ESC_SHORT), dict(ms=M_ESC_SHORT_OVERDUE), dict(ms=M_VALIDATED),
    dict(prev_val=True), dict(rel_noval=True),
    dict(rej_client=True), dict(rej_talent=True),
]

# corruption kinds, used round-robin: (table, kind)
CORRUPTIONS = [
    ("contact_attempts", "bad_date"),
    ("invoices", "unknown_enum"),
    ("contact_attempts", "duplicate_id"),
    ("invoices", "broken_reference"),
    ("users", "unknown_enum"),
    ("contact_attempts", "unknown_enum"),
    ("invoices", "bad_date"),
    ("contact_attempts", "broken_reference"),
    ("milestones", "unknown_enum"),
    ("users", "bad_type"),
    ("milestones", "broken_reference"),
    ("invoices", "duplicate_id"),
]

CHUNK = 50_000
D = 86_400
