# Configuration of an acur repository written by cur4llm (build_acur_repo, quantize).
# Generated from cur4llm's libcur4llm/templates/configuration_acur.py for model_type "{{BASE_MODULE}}".
#
# config.json is the base model's config plus an "acur" section that says how
# each compressed Linear layer is stored (docs/export.md of cur4llm). The
# section is kept as the attribute `acur` (a dict); everything else is the base
# class's.

from transformers import {{PREFIX}}Config

ACUR_FORMAT_VERSION = {{FORMAT_VERSION}}


class Acur{{PREFIX}}Config({{PREFIX}}Config):
    """{{PREFIX}}Config with the "acur" section of config.json (attribute `acur`)."""

    def acur_section(self):
        """The "acur" section as a dict, checked for a format this file reads."""
        section = getattr(self, "acur", None)
        if section is None:
            return {"format_version": ACUR_FORMAT_VERSION, "layers": {}}
        if not isinstance(section, dict):
            raise ValueError('config.json: "acur" must be an object')
        version = section.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise ValueError('config.json: "acur" needs an integer "format_version"')
        if version > ACUR_FORMAT_VERSION:
            raise ValueError(
                f"config.json: acur format_version {version} is newer than this modeling code reads "
                f"(up to {ACUR_FORMAT_VERSION}); rebuild the repository with a matching cur4llm"
            )
        return section
