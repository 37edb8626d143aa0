//! vmrig's guest kit (work in progress).
