"""The built-in quiescers, one module or package per database or freeze method; each is
registered under the ``snapagent.quiescers`` entry-point group exactly like a third-party one."""
