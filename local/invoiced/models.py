"""The companies a local Invoiced user can connect, and their seeded invoices."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

#: 2024-01-01T00:00:00Z; seeded dates count from here so every run sees the same data.
_SEED_EPOCH = 1_704_067_200
_DAY = 86_400
INVOICES_PER_COMPANY = 250


@dataclass(frozen=True)
class Company:
    """A company the signed-in local user may pick on the consent page."""

    id: int
    name: str
    email: str = "billing@example.com"
    country: str = "US"
    currency: str = "usd"
    time_zone: str = "America/Chicago"
    test_mode: bool = True

    def as_json(self) -> dict[str, Any]:
        """The body of `GET /companies/current`."""
        return {
            "id": self.id,
            "object": "company",
            "name": self.name,
            "email": self.email,
            "country": self.country,
            "currency": self.currency,
            "time_zone": self.time_zone,
            "test_mode": self.test_mode,
        }


DEFAULT_COMPANIES: tuple[Company, ...] = (
    Company(id=167, name="Acme Corporation", email="billing@acme.example"),
    Company(id=168, name="Globex Ltd", email="ar@globex.example", country="GB",
            currency="gbp", time_zone="Europe/London"),
)

# (status, weight): roughly the mix a real receivables ledger shows.
_STATUSES = (("paid", 40), ("sent", 15), ("viewed", 10), ("past_due", 12),
             ("pending", 5), ("not_sent", 5), ("draft", 8), ("voided", 5))
_CATALOG = (("Consulting hour", 150.0), ("Support plan", 49.99), ("Widget", 12.5),
            ("Onboarding", 1250.0), ("Hosting (monthly)", 300.0))


def seed_invoices(company: Company, link_base: str) -> list[dict[str, Any]]:
    """Build the company's deterministic invoice list, ordered by id.

    The generator is seeded from the company id alone, so two runs (and two
    instances) list identical invoices; only ``url``/``pdf_url`` carry
    ``link_base``.
    """
    rng = random.Random(f"invoiced-local:{company.id}")
    statuses = [name for name, _ in _STATUSES]
    weights = [weight for _, weight in _STATUSES]
    invoices = []
    for n in range(1, INVOICES_PER_COMPANY + 1):
        invoice_id = company.id * 100_000 + n
        date = _SEED_EPOCH + n * _DAY
        items: list[dict[str, Any]] = []
        for line in range(rng.randint(1, 3)):
            name, unit_cost = rng.choice(_CATALOG)
            quantity = rng.randint(1, 5)
            items.append({
                "id": invoice_id * 10 + line,
                "object": "line_item",
                "type": "service",
                "name": name,
                "description": None,
                "quantity": quantity,
                "unit_cost": unit_cost,
                "amount": round(quantity * unit_cost, 2),
                "discountable": True,
                "taxable": True,
                "metadata": {},
            })
        total = round(sum(item["amount"] for item in items), 2)
        status = rng.choices(statuses, weights)[0]
        balance = 0.0 if status in ("paid", "voided") else total
        if status == "pending":
            # A payment is in flight, so part of the invoice is already covered.
            balance = round(total / 2, 2)
        client_token = f"{rng.getrandbits(96):024x}"
        invoices.append({
            "id": invoice_id,
            "object": "invoice",
            "customer": company.id * 1_000 + rng.randint(1, 40),
            "name": "Invoice",
            "number": f"INV-{n:05d}",
            "currency": company.currency,
            "date": date,
            "due_date": None if status == "draft" else date + 30 * _DAY,
            "payment_terms": "NET 30",
            "status": status,
            "subtotal": total,
            "total": total,
            "balance": balance,
            "paid": status == "paid",
            "closed": status in ("paid", "voided"),
            "draft": status == "draft",
            "items": items,
            "url": f"{link_base}/invoices/{client_token}",
            "pdf_url": f"{link_base}/invoices/{client_token}/pdf",
            "created_at": date,
            "updated_at": date + rng.randint(0, 20) * _DAY,
            "metadata": {"po_number": f"PO-{rng.randint(1000, 9999)}"} if n % 7 == 0 else {},
        })
    return invoices
