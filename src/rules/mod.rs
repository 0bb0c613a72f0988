//! Pure decision rules that the actors wrap.
