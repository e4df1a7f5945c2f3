use pyo3::prelude::*;

#[pyfunction]
fn ping() -> &'static str { "pong" }

#[pymodule]
fn rustbpe(_py: Python, m: &PyModule) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(ping, m)?)?;
    Ok(())
}
