"""zsad's web demo (``zsad demo``): upload images or pick the bundled samples, see scores, heat maps and masks,
download the table as CSV, and ask about the selected image.

One :class:`DemoApp` per process owns the model: detectors are built once through :func:`zsad.create` on one shared
backbone and used by every visitor behind one lock. Images are scored through zsad's runner, like ``zsad score``,
which decides each image once; moving the threshold slider decides again from the kept maps
(:func:`zsad.decisions.decide`), without re-scoring. Each visitor's results live in a bounded session store (the
page holds only the session's id), and every request reserves its memory first: the demo refuses work with a
message rather than being killed for memory.

Modules, by job (only :mod:`~zsad.demo.page` imports gradio, when called; nothing in the library imports this
package):

* :mod:`~zsad.demo.app` -- :class:`DemoApp`, the handlers as plain methods; :mod:`~zsad.demo.config` -- its options.
* :mod:`~zsad.demo.models` -- detectors on the shared backbone, the methods and adapters offered.
* :mod:`~zsad.demo.uploads` -- inputs, limits and header sizes; :mod:`~zsad.demo.names` -- safe file names.
* :mod:`~zsad.demo.service` -- scoring through the runner, and drawing again at another threshold.
* :mod:`~zsad.demo.kept` -- one scored image as a session keeps it; :mod:`~zsad.demo.view` -- overlays, table and
  status of a session at a threshold; :mod:`~zsad.demo.table` -- the table's rows and CSV.
* :mod:`~zsad.demo.sessions` -- sessions and their bounded store; :mod:`~zsad.demo.memory` -- the memory budget.
* :mod:`~zsad.demo.chat` -- questions about the selected image; :mod:`~zsad.demo.health` -- ``/health``.
* :mod:`~zsad.demo.page` -- the gradio page.

The bundled samples live in the repository's ``demo/samples`` (``zsad/_data/demo/samples`` in a wheel).
"""

from zsad.demo.app import DemoApp
from zsad.demo.config import DemoConfig

__all__ = ["DemoApp", "DemoConfig"]
