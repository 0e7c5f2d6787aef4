"""Zero-shot prompt templates: the default, the one validity rule, the prompts.

Torch-free, so the ``slap`` command can check ``--template`` before it loads a
model.

Authors
 * speechbrain-slap contributors 2026
"""

import string
from collections.abc import Sequence

DEFAULT_TEMPLATE = "This is a sound of {label}."


def check_templates(templates: Sequence[str] | str) -> list[str]:
    """Checks prompt templates: each a string with a ``{label}`` field and no other.

    Arguments
    ---------
    templates : str or sequence of str
        One template or several (a prompt ensemble).

    Returns
    -------
    list of str

    Raises
    ------
    ValueError
        No template, or one that is not a string, lacks ``{label}``, has another
        field (``{x}``, ``{0}``) or unbalanced braces; the message names it.

    Example
    -------
    >>> check_templates(["a sound of {label}", "{label} can be heard"])
    ['a sound of {label}', '{label} can be heard']
    >>> check_templates("a sound of {x}")
    Traceback (most recent call last):
    ...
    ValueError: template 'a sound of {x}' has no {label} field
    """
    templates = [templates] if isinstance(templates, str) else list(templates)
    if not templates:
        raise ValueError("no prompt template given")
    for template in templates:
        if not isinstance(template, str):
            raise ValueError(f"template {template!r}: expected a string")
        try:
            fields = {field for _, field, _, _ in string.Formatter().parse(template) if field}
        except ValueError:  # unbalanced braces
            fields = None
        if fields is not None and "label" not in fields:
            raise ValueError(f"template {template!r} has no {{label}} field")
        if fields != {"label"}:
            raise ValueError(
                f"template {template!r}: expected a {{label}} field and no other braces"
            )
    return templates


def prompts_for(labels: Sequence[str], templates: Sequence[str] | str) -> list[str]:
    """Every prompt, label-major: ``templates[t].format(label)`` for each label.

    ``_`` in a class name is read as a space (``"dog_bark"`` -> ``"dog bark"``).

    Example
    -------
    >>> prompts_for(["dog_bark", "rain"], ["a {label}", "{label}!"])
    ['a dog bark', 'dog bark!', 'a rain', 'rain!']
    """
    templates = check_templates(templates)
    return [t.format(label=label.replace("_", " ")) for label in labels for t in templates]
