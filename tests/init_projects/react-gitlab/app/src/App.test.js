import { render, screen } from "@testing-library/react";
import App from "./App";

test("says hello", () => {
  render(<App />);
  expect(screen.getByText(/hello/i)).toBeInTheDocument();
});
