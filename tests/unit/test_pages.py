"""Pages escape every reflected value and carry the security headers."""

from __future__ import annotations

import re

from invoiced_connect.connect import pages
from tests.support import security_header_problems

HOSTILE = '<script>alert("x")</script>&\'"'


def test_error_page_escapes_title_message_and_reference():
    result = pages.error_page(400, HOSTILE, HOSTILE, HOSTILE)
    assert "<script>" not in result.body
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#x27;&quot;" in result.body
    assert result.status == 400


def test_connected_page_escapes_the_company_name():
    result = pages.connected_page(HOSTILE)
    assert "<script>" not in result.body
    assert "Connected to &lt;script&gt;" in result.body


def test_branding_values_are_escaped_in_text_and_attributes():
    branding = pages.Branding(HOSTILE, "https://x.test/\"><script>", 'https://app.test/"><script>')
    body = pages.error_page(400, "t", "m", "r", branding=branding).body
    assert "<script>" not in body
    assert 'href="https://x.test/&quot;&gt;&lt;script&gt;"' in body
    assert 'href="https://app.test/&quot;&gt;&lt;script&gt;"' in body
    assert "Connect &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#x27;&quot; to Invoiced" in body
    assert "Back to &lt;script&gt;" in body
    mail = pages.error_page(400, "t", "m", "r", branding=pages.Branding(None, "a'b@example.com")).body
    assert '<a href="mailto:a&#x27;b@example.com">a&#x27;b@example.com</a>' in mail


def test_connected_page_without_company_name_still_reads_well():
    assert "Connected to your Invoiced account" in pages.connected_page(None).body


def test_every_page_carries_the_security_headers():
    for result in (pages.error_page(400, "t", "m", "r"), pages.connected_page("Acme"), pages.redirect("https://x.test/"),
                   pages.OutcomePage(502, "t", "m", "r").render(), pages.OutcomePage(200, "t", "", "r", connected=True).render()):
        headers = result.headers
        assert security_header_problems(headers) == []
        assert headers["Cache-Control"] == "no-store"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Frame-Options"] == "DENY"
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp


def test_pages_load_nothing_from_elsewhere_and_run_no_script():
    branding = pages.Branding("App", "https://help.example.com/", "https://app.example.com/")
    body = (pages.connected_page("Acme", branding=branding).body
            + pages.error_page(500, "t", "m", "r", branding=branding).body)
    assert not re.search(r"src\s*=", body, re.I)
    # Links to follow are the only references, and only in <a> elements.
    assert len(re.findall(r"href\s*=", body, re.I)) == len(re.findall(r'<a href="https://', body)) == 3
    assert "<script" not in body.lower() and "<link" not in body.lower()


def test_inline_style_is_the_one_the_csp_allows():
    import base64
    import hashlib

    body = pages.connected_page("Acme").body
    style = re.search(r"<style>(.*?)</style>", body, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in pages.CONTENT_SECURITY_POLICY
