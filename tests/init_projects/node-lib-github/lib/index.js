export { sum } from './utils.js'
