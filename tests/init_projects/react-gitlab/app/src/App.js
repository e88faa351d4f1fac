export default function App() {
  return <h1>Hello from the fixture</h1>;
}
